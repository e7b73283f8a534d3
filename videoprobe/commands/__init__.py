"""Sub-commands of `videoprobe`: each module here defines `register(subparsers)`; `videoprobe.cli.COMMANDS`
lists them in stage order.

Heavy imports (torch, open3d, ...) belong inside the handlers so that `--help` stays fast.
"""
