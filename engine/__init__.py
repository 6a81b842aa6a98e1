"""The engine: campaign config and plan, one device's worker, the run over a fleet, the results store, the cluster."""
