import sys

from respawn.pod.bootstrap import main

sys.exit(main())
