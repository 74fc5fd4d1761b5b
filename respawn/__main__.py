import sys

from respawn.controller.cli import main

sys.exit(main())
