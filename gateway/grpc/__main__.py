import sys

from gateway.grpc.cli import main

sys.exit(main())
