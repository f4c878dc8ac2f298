"""``python -m bench.peak CMD...``: run CMD, then print its peak resident memory in KiB (last line of stderr).

A small process forks the command, so the figure is the command's own: a child forked straight from a large
benchmark process would start with the parent's pages counted in its peak.
"""

from __future__ import annotations

import resource
import subprocess
import sys


def main() -> None:
    code = subprocess.call(sys.argv[1:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    sys.stderr.write(f"\npeak_rss_kib {peak}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
