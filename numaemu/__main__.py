import sys

from numaemu.cli import main

sys.exit(main())
