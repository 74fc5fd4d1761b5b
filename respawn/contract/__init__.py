"""The controller↔pod contract: the one module both sides import, and it imports nothing of
ours. The pod spec, checkpoint sources, the launch environment, the trainer command and the
pod's entry point are defined here and nowhere else (`docs/contracts.md`)."""
