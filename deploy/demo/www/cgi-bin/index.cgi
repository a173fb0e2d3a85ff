#!/bin/sh
# The demo's answer: which host, node and environment served this request.
# GANTRY_* come from the agent that runs the container; GREETING from the image.
printf 'Content-Type: text/plain\r\n\r\n'
echo "${GREETING:-hello} from ${GANTRY_SERVICE:-?}"
echo "  container ${HOSTNAME:-$(hostname)}"
echo "  node      ${GANTRY_NODE:-?}"
echo "  env       ${GANTRY_NODE_ENV:-?}"
echo "  site      ${GANTRY_NODE_SITE:-?}"
