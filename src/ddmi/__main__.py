import sys

from ddmi.cli import run_main

sys.exit(run_main())
