"""Sub-commands of `pointprobe`: each module here defines `register(subparsers)`; `pointprobe.cli.COMMANDS`
lists them in stage order.

Heavy imports (torch, open3d, ...) belong inside the handlers so that `--help` stays fast.
"""
