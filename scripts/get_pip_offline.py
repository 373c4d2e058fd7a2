"""Stand-in for ansible-test's pip bootstrap script, for machines that reach PyPI only.

ansible-test creates virtualenvs without pip and runs a cached get-pip script in them,
downloaded from a host outside PyPI. This stand-in installs pip with the interpreter's own
ensurepip and then runs `pip install` with the same arguments (the packages come from PyPI).
scripts/sanity.sh puts it where ansible-test looks for its cache.
"""
import ensurepip
import subprocess
import sys

GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")

ensurepip.bootstrap(upgrade=True)
args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + args))
