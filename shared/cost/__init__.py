"""Cost as a first-class limit: the GPU size catalogue, plan pricing, and the run-time ledger.

- ``catalogue``: Azure GPU VM sizes (GPUs, memory, vCPUs), hourly prices by region and tier, retirements;
  bundled and dated, overridable by the user's file (``RAPIDS_HPO_PRICES_FILE``).
- ``refresh``: rebuild the prices from the public Azure Retail Prices API.
- ``billing``: what a run bills, as its backend's planner declares it (node groups, billing model,
  start-up and idle tail, cheap tier): the one thing the others read of a backend.
- ``estimate``: a spec's cost range before it runs (the profile's node-hours x the catalogue's prices).
- ``ledger``: the run-time cost ledger (per trial, head, idle) and the driver's budget guard.
- ``report``: the plan's summary and comparison table, and the cost line of ``status``/``watch``.
"""

from shared.cost.catalogue import Catalogue, GpuSize, Price, SizeCheck, Tier, load_catalogue

__all__ = ["Catalogue", "GpuSize", "Price", "SizeCheck", "Tier", "load_catalogue"]
