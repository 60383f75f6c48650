#!/usr/bin/env bash
# The report's screenshots in this folder (docs/report/README.md): the $100K plan's report opened in
# headless Chromium (Debian's `chromium`), each part framed by an iframe opened at its anchor.
#     bash docs/report/screenshots.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
flmplan simulate --budget 100000 --report "$tmp/report.html" > /dev/null 2>&1
shot() {  # name, anchor ("" for the top), height (px)
    printf '<body style="margin:0"><iframe src="report.html#%s" style="border:0;width:1280px;height:%spx">' \
        "$2" "$3" > "$tmp/$1.html"
    chromium --headless --disable-gpu --no-sandbox --no-first-run --disable-background-networking \
        --disable-component-update --disable-sync --user-data-dir="$tmp/chromium" --hide-scrollbars \
        --window-size="1280,$3" --virtual-time-budget=15000 --screenshot="$here/$1.png" "file://$tmp/$1.html" \
        2> /dev/null
}
shot report-top "" 1100
shot report-budgets budgets 600
shot report-cost cost 1000
shot report-days-and-memory days 1000
