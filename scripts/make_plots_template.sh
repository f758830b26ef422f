#!/usr/bin/env bash
# Rebuild docs/dvc-plots.html: DVC's plots page template with vega, vega-lite and vega-embed
# inlined, so `dvc plots show` draws its charts offline (DVC's own page loads them from a CDN).
# .dvc/config points `plots.html_template` at it. The versions are the ones dvc-render's page
# asks for (dvc_render/vega.py); npm checks each tarball against the registry's integrity hash.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2)
BUILDS=(vega.min.js vega-lite.min.js vega-embed.min.js)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=docs/dvc-plots.html
{
  echo '<!DOCTYPE html>'
  echo '<html>'
  echo '<head>'
  echo '<meta charset="utf-8">'
  echo '{refresh_tag}'
  echo '<title>DVC plots</title>'
  echo "<!-- Made by scripts/make_plots_template.sh from ${PACKAGES[*]} (npm), inlined so the page"
  echo '     needs no network. Their licences (BSD-3-Clause) follow.'
  for i in "${!PACKAGES[@]}"; do
    (cd "$tmp" && npm pack --silent "${PACKAGES[$i]}" >/dev/null)
    mkdir -p "$tmp/$i" && tar xzf "$tmp"/*-"${PACKAGES[$i]#*@}".tgz -C "$tmp/$i"
    echo "---- ${PACKAGES[$i]}"
    sed 's/--/- -/g' "$tmp/$i/package/LICENSE"
  done
  echo '-->'
  for i in "${!PACKAGES[@]}"; do
    echo "<script>/* ${PACKAGES[$i]} */"
    cat "$tmp/$i/package/build/${BUILDS[$i]}"
    echo '</script>'
  done
  echo '<style>table { border-spacing: 15px; }</style>'
  echo '</head>'
  echo '<body>'
  echo '{plot_divs}'
  echo '</body>'
  echo '</html>'
} > "$out.tmp"
if grep -q '</script' <(for i in "${!PACKAGES[@]}"; do cat "$tmp/$i/package/build/${BUILDS[$i]}"; done); then
  echo "a library contains '</script': it cannot be inlined" >&2
  exit 1
fi
mv "$out.tmp" "$out"
echo "wrote $out ($(wc -c < "$out") bytes)"
