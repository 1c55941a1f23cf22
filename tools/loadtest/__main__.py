import sys

from tools.loadtest.cli import main

sys.exit(main())
