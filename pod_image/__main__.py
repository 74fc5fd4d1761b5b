from respawn.pod.bootstrap import entrypoint

entrypoint()
