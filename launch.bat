@echo off
rem One-click launcher for Windows.
rem
rem   launch.bat [gui args...]          set up venv\ if needed, then start the GUI
rem                                     (arguments go to gui.py: --host, --port, --auth, ...)
rem   launch.bat test [pytest args...]  same set-up plus the test extras, then pytest tests\
rem   launch.bat bench [args...]        same set-up as test (the GUI benchmark drives a browser),
rem                                     then bench\run.py: every benchmark, one table of ratios
rem                                     (--quick, --only NAME, --out bench\latest.md)
rem
rem pip runs only when the requirement files changed: venv\.requirements-stamp holds the
rem sha256 of the files used, the Python version and the variant (cpu, or cuda when
rem nvidia-smi works); venv\.requirements-test-stamp the same for requirements-test.txt.
rem Delete a stamp (or venv\) to force a reinstall.
rem
rem Environment:
rem   PYTHON=C:\path\python.exe  interpreter that creates the venv (default: py -3.11,
rem                              py -3.10, py -3.12, python)
rem   LAUNCH_VARIANT=cpu or cuda  skip GPU detection
rem   TORCH_CUDA=cu130           PyTorch CUDA wheel index used on NVIDIA machines
rem   CHROMIUM_PATH=...          Chromium-based browser for the browser tests and benchmark
rem                              (default: Chrome or Edge when installed)
setlocal
cd /d "%~dp0"
set "VENV=%~dp0venv"
set "VENV_PY=%~dp0venv\Scripts\python.exe"
set "MODE=run"
if /i "%~1"=="test" set "MODE=test"
if /i "%~1"=="bench" set "MODE=bench"

rem Offline first: nothing is fetched from a hub at run time; no analytics or telemetry.
set "HF_HUB_OFFLINE=1"
set "HF_DATASETS_OFFLINE=1"
set "TRANSFORMERS_OFFLINE=1"
set "HF_HUB_DISABLE_TELEMETRY=1"
set "DISABLE_TELEMETRY=1"
set "DO_NOT_TRACK=1"
set "GRADIO_ANALYTICS_ENABLED=False"
set "PYTHONUTF8=1"

if not defined TORCH_CUDA set "TORCH_CUDA=cu130"
set "VARIANT=%LAUNCH_VARIANT%"
if defined VARIANT goto variant_known
set "VARIANT=cpu"
where nvidia-smi >nul 2>nul && nvidia-smi -L >nul 2>nul && set "VARIANT=cuda"
:variant_known
if "%VARIANT%"=="cpu" goto variant_ok
if "%VARIANT%"=="cuda" goto variant_ok
echo [launch] error: LAUNCH_VARIANT must be cpu or cuda. 1>&2
goto fail
:variant_ok

if exist "%VENV_PY%" goto have_venv
if exist "%VENV%" (
    echo [launch] error: "%VENV%" exists but holds no venv. Delete it and run again. 1>&2
    goto fail
)
call :find_python || goto fail
echo [launch] creating venv with %PY_CMD%
%PY_CMD% -m venv "%VENV%"
if errorlevel 1 (
    echo [launch] error: could not create the venv. Delete "%VENV%" and run again. 1>&2
    goto fail
)
:have_venv
"%VENV_PY%" -c "import sys" >nul 2>nul
if errorlevel 1 (
    echo [launch] error: the venv's Python does not run. Delete "%VENV%" and run again. 1>&2
    goto fail
)

rem Main requirements: torch's pin is read from requirements.txt (declared once).
if "%VARIANT%"=="cuda" (
    call :ensure requirements "%VENV%\.requirements-stamp" install_main cuda-%TORCH_CUDA% requirements.txt requirements-cuda.txt || goto fail
) else (
    call :ensure requirements "%VENV%\.requirements-stamp" install_main cpu requirements.txt || goto fail
)

if "%MODE%"=="test" goto run_tests
if "%MODE%"=="bench" goto run_tests
"%VENV_PY%" gui.py %*
if errorlevel 1 goto fail
exit /b 0

:run_tests
call :ensure "test requirements" "%VENV%\.requirements-test-stamp" install_test %VARIANT% requirements-test.txt || exit /b 1
if defined CHROMIUM_PATH goto chromium_known
if exist "%ProgramFiles%\Google\Chrome\Application\chrome.exe" set "CHROMIUM_PATH=%ProgramFiles%\Google\Chrome\Application\chrome.exe"
if defined CHROMIUM_PATH goto chromium_known
if exist "%ProgramFiles(x86)%\Microsoft\Edge\Application\msedge.exe" set "CHROMIUM_PATH=%ProgramFiles(x86)%\Microsoft\Edge\Application\msedge.exe"
:chromium_known
if defined CHROMIUM_PATH echo [launch] chromium: %CHROMIUM_PATH%
if not defined CHROMIUM_PATH echo [launch] no Chrome or Edge found: browser tests cannot run. Set CHROMIUM_PATH.
if "%MODE%"=="bench" goto run_bench
rem argv[1] is "test"; the rest goes to pytest exactly as typed.
"%VENV_PY%" -c "import sys, pytest; sys.exit(pytest.main(['tests'] + sys.argv[2:]))" %*
exit /b %errorlevel%

:run_bench
rem argv[1] is "bench"; the rest goes to bench\run.py exactly as typed.
"%VENV_PY%" -c "import runpy, sys; sys.argv = ['bench/run.py'] + sys.argv[2:]; runpy.run_path('bench/run.py', run_name='__main__')" %*
exit /b %errorlevel%

rem ---------------------------------------------------------------------------
rem ensure NAME STAMP_FILE INSTALL_LABEL VARIANT FILE...: install unless the stamp matches.
:ensure
set "ENSURE_NAME=%~1"
set "STAMP_FILE=%~2"
set "INSTALL=%~3"
shift & shift & shift
"%VENV_PY%" -c "import hashlib, platform, sys; d = hashlib.sha256(); [d.update(hashlib.sha256(open(p, 'rb').read().replace(b'\r\n', b'\n')).digest()) for p in sys.argv[2:]]; print(d.hexdigest(), 'python' + platform.python_version(), sys.argv[1])" %1 %2 %3 %4 > "%STAMP_FILE%.new" || exit /b 1
fc /b "%STAMP_FILE%" "%STAMP_FILE%.new" >nul 2>nul
if errorlevel 1 goto ensure_install
del "%STAMP_FILE%.new"
echo [launch] %ENSURE_NAME% unchanged, skipping install
exit /b 0
:ensure_install
echo [launch] installing %ENSURE_NAME% (%VARIANT%) with pip; the first time takes several minutes
if exist "%STAMP_FILE%" del "%STAMP_FILE%"
call :%INSTALL%
if errorlevel 1 (
    echo [launch] error: installing %ENSURE_NAME% failed, see pip's message above. 1>&2
    exit /b 1
)
move /y "%STAMP_FILE%.new" "%STAMP_FILE%" >nul
exit /b 0

:install_main
if not "%VARIANT%"=="cuda" goto install_main_rest
set "TORCH_PIN="
for /f "usebackq delims=" %%L in (`findstr /b /c:"torch==" requirements.txt`) do set "TORCH_PIN=%%L"
"%VENV_PY%" -m pip install --disable-pip-version-check "%TORCH_PIN%" --index-url "https://download.pytorch.org/whl/%TORCH_CUDA%" || exit /b 1
:install_main_rest
"%VENV_PY%" -m pip install --disable-pip-version-check -r requirements.txt || exit /b 1
if not "%VARIANT%"=="cuda" exit /b 0
rem onnxruntime and onnxruntime-gpu ship the same module: remove both, add the GPU one.
"%VENV_PY%" -m pip uninstall -y onnxruntime onnxruntime-gpu || exit /b 1
"%VENV_PY%" -m pip install --disable-pip-version-check -r requirements-cuda.txt || exit /b 1
exit /b 0

:install_test
"%VENV_PY%" -m pip install --disable-pip-version-check -r requirements-test.txt || exit /b 1
exit /b 0

:find_python
if not defined PYTHON goto find_python_search
set PY_CMD="%PYTHON%"
call :python_ok && exit /b 0
echo [launch] error: PYTHON=%PYTHON% does not run as Python 3.10, 3.11 or 3.12. 1>&2
exit /b 1
:find_python_search
set PY_CMD=py -3.11
call :python_ok && exit /b 0
set PY_CMD=py -3.10
call :python_ok && exit /b 0
set PY_CMD=py -3.12
call :python_ok && exit /b 0
set PY_CMD=python
call :python_ok && exit /b 0
echo [launch] error: Python 3.10, 3.11 or 3.12 is needed (3.11 recommended) and none was 1>&2
echo found (tried py -3.11, py -3.10, py -3.12, python). Install Python 3.11 from 1>&2
echo python.org (tick "Add python.exe to PATH"), or set PYTHON=C:\path\to\python.exe. 1>&2
exit /b 1

:python_ok
%PY_CMD% -c "import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))" >nul 2>nul
exit /b %errorlevel%

:fail
rem Keep the window open when started by a double click, so the message can be read.
if "%MODE%"=="run" pause
exit /b 1
