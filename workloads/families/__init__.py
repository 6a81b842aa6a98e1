"""The built-in model families, each a plugin of autlearn.workloads.registry (entry points `autlearn.families`)."""
