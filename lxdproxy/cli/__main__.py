import sys

from lxdproxy.cli.main import main

sys.exit(main())
