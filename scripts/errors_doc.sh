#!/usr/bin/env bash
# Rewrite the table of `carl route` errors in docs/errors.md (between its route-errors markers) from
# the messages the cases of tests/cli/route_errors.sh get now. ctest cli_route_errors fails while the
# table and the messages differ.
# Usage: scripts/errors_doc.sh [path-to-carl (default build/carl)]
set -euo pipefail
cd "$(dirname "$0")/.."
carl=${1:-build/carl}
rows=$(mktemp)
trap 'rm -f "$rows" "$rows.doc"' EXIT
CARL_ERRORS_DOC_ROWS="$rows" bash tests/cli/route_errors.sh "$carl" > /dev/null ||
  { echo "errors_doc: a case of tests/cli/route_errors.sh failed; fix it first" >&2; exit 1; }
awk -v rows="$rows" '
  /<!-- route-errors:end -->/ { while ((getline l < rows) > 0) print l; skip = 0 }
  !skip { print }
  /<!-- route-errors:begin -->/ { print "| command | error |"; print "|---|---|"; skip = 1 }
' docs/errors.md > "$rows.doc"
mv "$rows.doc" docs/errors.md
echo "errors_doc: docs/errors.md: $(wc -l < "$rows") cases of carl route"
