"""autlearn host controller: device seam, probe, governors, campaigns, results."""

__version__ = "0.1.0"
