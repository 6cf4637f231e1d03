import sys

from nixfly.cli import main

sys.exit(main())
