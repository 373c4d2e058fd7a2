#!/usr/bin/env bash
# Build the collection tarball and install it into a scratch collections path, then make
# sure the installed copy is usable: ansible-doc renders the module and the role's
# argument specs load.
#
# The tarball's file list is checked: nothing .gitignore ignores (test caches, the report's
# real denial data, lab state) may ship, and nothing outside the allow-list of
# tests/unit/test_installed_collection.py (the collection and its docs only). To make the check bite on a clean checkout too, the
# build runs with decoys of each such kind planted in the tree (removed again at exit).
#
# `scripts/build.sh importer` (the build stage of `make test`) then runs galaxy-importer on the
# tarball, as Galaxy would on upload, and fails on any warning or error it prints. It is run
# offline and without its container step: ansible-test off (GALAXY_IMPORTER_RUN_ANSIBLE_TEST,
# the sanity stage runs it), its ansible-lint in offline mode (GALAXY_IMPORTER_OFFLINE_ANSIBLE_LINT,
# no Galaxy or PyPI look-ups), flake8 off; its scratch space in our temporary directory.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
out=$(mktemp -d)
planted=()
cleanup() {
  local path
  for path in "${planted[@]}"; do rm -rf "$path"; done
  rm -rf "$out"
}
trap cleanup EXIT
# Decoys: created only where nothing is, removed at exit.
for decoy in egress-report/report.json .hypothesis/decoy .pytest_cache/decoy tests/unit/.hypothesis/decoy \
             tests/unit/__pycache__/decoy.cpython-313.pyc plugins/module_utils/__pycache__/decoy.pyc \
             molecule/shared/tests/.pytest_cache/decoy tests/output/decoy; do
  [ -e "$decoy" ] && continue
  first=$decoy  # the top-most missing folder on the way, or the file: what to remove again
  while [ "$(dirname "$first")" != . ] && [ ! -e "$(dirname "$first")" ]; do first=$(dirname "$first"); done
  planted+=("$ROOT/$first")
  mkdir -p "$(dirname "$decoy")"
  echo decoy > "$decoy"
done

ansible-galaxy collection build --force --output-path "$out" . >/dev/null
tarball=$(ls "$out"/agentguard-hardening-*.tar.gz)

# The file list: nothing that git ignores, nothing of the known kinds of leftovers.
tar -tzf "$tarball" > "$out/files.txt"
python3 - "$out/files.txt" "$ROOT" "$tarball" <<'EOF'
import fnmatch
import subprocess
import sys
import tarfile

names = [line.rstrip("/\n") for line in open(sys.argv[1]) if line.strip()]
names = [n[2:] if n.startswith("./") else n for n in names]
forbidden = ["egress-report", "*/egress-report", ".hypothesis", "*/.hypothesis", ".pytest_cache", "*/.pytest_cache",
             "__pycache__", "*/__pycache__", "*.pyc", "tests/output", ".venv", ".cache", "lab/.state", "*.tar.gz"]
bad = sorted(n for n in names if any(fnmatch.fnmatch(n, p) or fnmatch.fnmatch(n, p + "/*") for p in forbidden))
try:
    ignored = subprocess.run(["git", "-C", sys.argv[2], "check-ignore", "--no-index", "--stdin"],
                             input="\n".join(n for n in names if n not in ("MANIFEST.json", "FILES.json")),
                             capture_output=True, text=True, check=False).stdout.split()
except OSError:  # no git: the patterns alone
    ignored = []
bad = sorted(set(bad) | set(ignored))
if bad:
    sys.exit("build: the tarball ships %d file(s) it must not (caches, report data, lab state):\n  %s"
             % (len(bad), "\n  ".join(bad[:40])))
# The allow-list of tests/unit/test_installed_collection.py: the collection and its docs only.
sys.path.insert(0, sys.argv[2] + "/tests/unit")
from test_installed_collection import tarball_problems  # noqa: E402
with tarfile.open(sys.argv[3]) as tar:
    outside, missing = tarball_problems([m.name[2:] if m.name.startswith("./") else m.name
                                         for m in tar.getmembers() if not m.isdir()])
if outside or missing:
    sys.exit("build: the tarball ships files outside the allow-list (galaxy.yml build_ignore):\n  %s\nlacks: %s"
             % ("\n  ".join(outside[:40]), ", ".join(missing) or "nothing"))
EOF

ansible-galaxy collection install --force -p "$out/installed" "$tarball" >/dev/null 2>&1
ANSIBLE_COLLECTIONS_PATH="$out/installed" ansible-doc agentguard.hardening.egress_rules >/dev/null
ANSIBLE_COLLECTIONS_PATH="$out/installed" ansible-doc agentguard.hardening.egress_denials >/dev/null
if [ -d roles/egress ]; then
  ANSIBLE_COLLECTIONS_PATH="$out/installed" ansible-doc -t role agentguard.hardening.egress >/dev/null
fi
echo "build: ok ($(basename "$tarball"), $(wc -l < "$out/files.txt") files, none ignored by git; installed and documented)"

if [ "${1:-}" = importer ]; then
  mkdir -p "$out/importer"
  log="$out/importer.log"
  # From its scratch folder: it writes importer_result.json into the working directory.
  if ! (cd "$out/importer" && GALAXY_IMPORTER_RUN_ANSIBLE_TEST=false GALAXY_IMPORTER_OFFLINE_ANSIBLE_LINT=true \
       GALAXY_IMPORTER_RUN_FLAKE8=false GALAXY_IMPORTER_TMP_ROOT_DIR="$out/importer" \
       GALAXY_IMPORTER_ANSIBLE_LOCAL_TMP="$out/importer/ansible-tmp" \
       timeout 900 python -m galaxy_importer.main "$tarball" > "$log" 2>&1); then
    tail -n 40 "$log" >&2
    echo "build: galaxy-importer failed" >&2
    exit 1
  fi
  if grep -E '^(WARNING|ERROR)' "$log" >&2; then
    echo "build: galaxy-importer reported the warnings or errors above" >&2
    exit 1
  fi
  echo "build: galaxy-importer ok ($(grep -c '^Loading' "$log") items loaded, no warnings)"
fi
