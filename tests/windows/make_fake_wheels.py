"""Tiny offline stand-in wheels (pure Python) for the launch.bat scenarios under wine.

The fake pytest prints its arguments and returns FAKE_PYTEST_RC (default 0)."""
import base64
import hashlib
import os
import sys
import zipfile

PYTEST = (
    "import os\n"
    "def main(args):\n"
    "    print('[fake pytest] args=%r' % (args,))\n"
    "    return int(os.environ.get('FAKE_PYTEST_RC', '0'))\n"
)


def wheel(out, name, ver, files):
    dist = f"{name.replace('-', '_')}-{ver}.dist-info"
    files = dict(files)
    files[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n"
    files[f"{dist}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: fake\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    rec = []
    for p, c in files.items():
        h = base64.urlsafe_b64encode(hashlib.sha256(c.encode()).digest()).rstrip(b"=").decode()
        rec.append(f"{p},sha256={h},{len(c.encode())}")
    rec.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(rec) + "\n"
    path = os.path.join(out, f"{name.replace('-', '_')}-{ver}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as z:
        for p, c in sorted(files.items()):
            zi = zipfile.ZipInfo(p, date_time=(2020, 1, 1, 0, 0, 0))
            z.writestr(zi, c)


def make_wheels(out):
    os.makedirs(out, exist_ok=True)
    for name, ver in [("torch", "2.13.0"), ("torch", "2.13.0+cu126"), ("torch", "2.13.0+cu130"),
                      ("onnxruntime", "1.32.0"), ("onnxruntime-gpu", "1.31.1"), ("xformers", "0.0.35")]:
        wheel(out, name, ver, {f"fake_{name.replace('-', '_')}.py": "X = 1\n"})
    wheel(out, "pytest", "9.2.0", {"pytest.py": PYTEST})


if __name__ == "__main__":
    make_wheels(sys.argv[1])
