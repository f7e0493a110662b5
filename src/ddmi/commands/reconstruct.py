"""``ddmi reconstruct RUN INPUTS... --out DIR``: encode inputs and write what they decode to (the
run's domain reads and writes the files)."""

from __future__ import annotations

from ddmi import domains
from ddmi.commands.options import (check_domain_options, check_options, check_out_folder, device_option, log,
                                   torch_threads)
from ddmi.devices import default_device
from ddmi.files import check_free
from ddmi.runs import load_autoencoder


def run(args) -> int:
    check_options(args, "resolution", "views", "frames")
    check_out_folder(args.out)
    device = device_option(args) or default_device()
    torch_threads()
    ae = load_autoencoder(args.run_dir, device=device)
    domain = domains.get(ae.config.domain)
    check_domain_options(args, domain, "reconstruct")
    args.inputs = [str(p) for p in domain.reconstruct_inputs(args.inputs)]
    check_free(domain.reconstruct_targets(args, ae), args.overwrite)
    return domain.reconstruct(args, ae, log)
