import sys

from fga.cli import main

sys.exit(main())
