#!/bin/sh
# The known workload of the agent tests: a few programs, files read and written, a TCP port
# listened on and connected to, a UDP port bound, sent to and received on.
# Usage: workload.sh MARKER   (MARKER names the file written, so each run is told apart)
set -e
marker="${1:-imprint}"
cat /etc/os-release > /dev/null
echo "$marker" > "/tmp/$marker.txt"
ls /usr/share > /dev/null
python3 "$(dirname "$0")/net.py"
