import sys

from minitron.cli import main

sys.exit(main())
