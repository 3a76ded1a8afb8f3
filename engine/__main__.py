import sys

from engine.runtime.cli import main

sys.exit(main())
