#!/bin/sh
# Late command: runs inside the installed system at the end of the install.
# A profile's own installs.d/PROFILE.sh replaces this one.
set -e
echo "pim: install finished on $(hostname)"
