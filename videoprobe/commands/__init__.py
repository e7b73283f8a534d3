"""Sub-commands of `videoprobe`: each module here defines `register(subparsers)`; the CLI finds them all.

Heavy imports (torch, open3d, ...) belong inside the handlers so that `--help` stays fast.
"""
