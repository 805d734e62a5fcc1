#!/bin/sh
# Runs a build step with the host's pip certificate bundle when `fedsim images build` lends
# one (PIP_CERT_URL, served on the host's loopback for the build): a host behind a
# TLS-inspecting proxy trusts its CA only through it. The bundle is removed afterwards, so
# no image layer keeps it.
set -e
if [ -n "$PIP_CERT_URL" ]; then
    python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
        "$PIP_CERT_URL" /tmp/lent-pip-cert.pem
    export PIP_CERT=/tmp/lent-pip-cert.pem
fi
status=0
"$@" || status=$?
rm -f /tmp/lent-pip-cert.pem
exit $status
