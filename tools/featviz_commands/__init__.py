"""Sub-commands of `featviz` (points, video, report); each module defines `register(subparsers)`."""
