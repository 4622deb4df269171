#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh cosyvoice,ray,test

# The console is tested in a real headless Chromium, and WebRTC against GStreamer's
# webrtcbin driven by the system python3 (Debian's packages; the GStreamer test skips without them).
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
/usr/bin/python3 -c "import gi; gi.require_version('GstWebRTC', '1.0'); gi.require_version('Nice', '0.1')" 2>/dev/null ||
  missing+=(gstreamer1.0-plugins-bad gstreamer1.0-plugins-good gstreamer1.0-nice gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 python3-gi)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "warning: not installed: ${missing[*]} (apt-get install them); the browser tests fail, the GStreamer test skips" >&2
  fi
fi

exec .venv/bin/python -m pytest "$@"
