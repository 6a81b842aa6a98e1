"""What drives the engine from the workloads side: generated campaigns (whole models, layer tables), the
artifact cache, the closed pruning loop, tuning for a campaign."""
