import sys

from ddmi.cli import main

sys.exit(main())
