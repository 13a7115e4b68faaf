#!/bin/sh
# Provisioning: runs over SSH after the install. scripts.d/PROFILE.sh replaces this one.
set -e
echo "pim: provisioning $(hostname)"
