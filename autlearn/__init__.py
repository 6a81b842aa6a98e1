"""autlearn: benchmark on-device training of neural networks on a fleet of Android phones.

One import name; its subpackages are the repository's top-level folders (linked here): `cli`, `pipelines`,
`engine`, `reports`, `profiler` (the device layer), `workloads`, `device_scripts`, and `testbed` (the virtual lab,
a plugin). Layers, top to bottom: cli -> reports / pipelines -> engine -> workloads -> profiler."""
