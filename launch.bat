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
rem The PyTorch build is chosen from the GPUs and driver that nvidia-smi reports (core\launcher.py
rem choose-build: cpu, or the newest CUDA build, e.g. cu130 or cu126, that runs every GPU on the
rem installed driver; when none can, it says why and nothing is installed). pip runs only when the
rem requirement files or that choice changed: venv\.requirements-stamp holds the sha256 of the
rem files used, the Python version and the build; venv\.requirements-test-stamp the same for
rem requirements-test.txt. Delete a stamp (or venv\) to force a reinstall.
rem The decisions are made by core\launcher.py (tested Python); this script only runs them.
rem
rem Environment:
rem   PYTHON=C:\path\python.exe  interpreter that creates the venv (default: py -3.11, py -3.12,
rem                              py -3.13, python; a .bat/.cmd shim such as pyenv-win's works)
rem   LAUNCH_VARIANT=cpu or cuda  skip GPU detection (cuda: the build detected, or TORCH_CUDA)
rem   TORCH_CUDA=cu126           PyTorch CUDA build to install on an NVIDIA machine
rem   CHROMIUM_PATH=...          Chromium-based browser for the browser tests and benchmark
rem                              (default: Chrome, per user or for all users, or Edge)
rem
rem Paths may hold spaces, ( ) & ^ % and non-ASCII letters: every path is quoted, none goes
rem through `call` (which expands % and doubles ^ a second time), and after the cd below the
rem project's files are named relative to it.
setlocal EnableExtensions DisableDelayedExpansion
set "MODE=run"
if /i "%~1"=="test" set "MODE=test"
if /i "%~1"=="bench" set "MODE=bench"

rem A double click runs `cmd /c ""...\launch.bat" "`: only then is the window kept open on a
rem failure, so the message can be read (a console stays open anyway). When cmd does not say
rem how it was started (wine's cmd), keep it open. Delayed expansion reads the command line
rem without parsing its quotes or & signs.
set "DOUBLE_CLICK=1"
setlocal EnableDelayedExpansion
set "CMD_LINE=!cmdcmdline!"
if defined CMD_LINE if /i "!CMD_LINE: /c =!"=="!CMD_LINE!" set "DOUBLE_CLICK="
endlocal & set "DOUBLE_CLICK=%DOUBLE_CLICK%"

set "ROOT=%~dp0"
if "%ROOT:~0,2%"=="\\" goto unc_path
rem The short path when %~dp0 cannot be entered: wine's cmd drops a % from %~dp0 (each on a
rem line of its own: that % would pair with the next one on the line).
cd /d "%~dp0" 2>nul && goto in_root
cd /d "%~dps0" 2>nul && goto in_root
goto cd_failed
:in_root
if not exist "core\launcher.py" goto incomplete
set "ROOT=%CD%"
if "%ROOT:~-1%"=="\" set "ROOT=%ROOT:~0,-1%"
set "VENV=%ROOT%\venv"
set "VENV_PY=venv\Scripts\python.exe"
set "OUT_FILE=venv-launch-output.tmp"

rem Offline first: nothing is fetched from a hub at run time; no analytics or telemetry.
set "HF_HUB_OFFLINE=1"
set "HF_DATASETS_OFFLINE=1"
set "TRANSFORMERS_OFFLINE=1"
set "HF_HUB_DISABLE_TELEMETRY=1"
set "DISABLE_TELEMETRY=1"
set "DO_NOT_TRACK=1"
set "GRADIO_ANALYTICS_ENABLED=False"
set "PYTHONUTF8=1"

rem PY_CMD runs core\launcher.py: the venv's Python once there is one, else the Python found.
if not exist "%VENV_PY%" goto new_venv
set "PY_CMD=%VENV_PY%"
set "PY_CALL="
"%VENV_PY%" -c "import sys" >nul 2>nul
rem Not `if errorlevel 1`: a Python that cannot start (a missing DLL: 0xC0000135) exits negative.
if not "%errorlevel%"=="0" goto venv_broken
call :choose_build || goto fail
goto have_venv

:new_venv
if exist "venv\" goto not_a_venv
call :find_python || goto fail
rem The build is chosen before the venv exists: a refusal leaves nothing behind.
call :choose_build || goto fail
echo [launch] creating venv with %PY_SHOWN%
call :sys_py -m venv venv
if not "%errorlevel%"=="0" goto venv_failed
if not exist "%VENV_PY%" goto venv_failed
set "PY_CMD=%VENV_PY%"
set "PY_CALL="
"%VENV_PY%" -c "import sys" >nul 2>nul
if not "%errorlevel%"=="0" goto venv_broken

:have_venv
set "ENSURE_NAME=requirements"
set "STAMP_FILE=venv\.requirements-stamp"
set "INSTALL=install_main"
set "STAMP_FILES=requirements.txt"
if "%VARIANT%"=="cuda" set "STAMP_FILES=requirements.txt requirements-cuda.txt"
call :ensure || goto fail

if "%MODE%"=="test" goto run_tests
if "%MODE%"=="bench" goto run_tests
"%VENV_PY%" gui.py %*
set "GUI_RC=%errorlevel%"
if not "%GUI_RC%"=="0" goto gui_failed
exit /b 0

:run_tests
set "ENSURE_NAME=test requirements"
set "STAMP_FILE=venv\.requirements-test-stamp"
set "INSTALL=install_test"
set "STAMP_FILES=requirements-test.txt"
call :ensure || exit /b 1
if defined CHROMIUM_PATH goto chromium_known
if exist "%LOCALAPPDATA%\Google\Chrome\Application\chrome.exe" set "CHROMIUM_PATH=%LOCALAPPDATA%\Google\Chrome\Application\chrome.exe"
if defined CHROMIUM_PATH goto chromium_known
if exist "%ProgramFiles%\Google\Chrome\Application\chrome.exe" set "CHROMIUM_PATH=%ProgramFiles%\Google\Chrome\Application\chrome.exe"
if defined CHROMIUM_PATH goto chromium_known
if exist "%ProgramFiles(x86)%\Google\Chrome\Application\chrome.exe" set "CHROMIUM_PATH=%ProgramFiles(x86)%\Google\Chrome\Application\chrome.exe"
if defined CHROMIUM_PATH goto chromium_known
if exist "%ProgramFiles(x86)%\Microsoft\Edge\Application\msedge.exe" set "CHROMIUM_PATH=%ProgramFiles(x86)%\Microsoft\Edge\Application\msedge.exe"
if defined CHROMIUM_PATH goto chromium_known
if exist "%ProgramFiles%\Microsoft\Edge\Application\msedge.exe" set "CHROMIUM_PATH=%ProgramFiles%\Microsoft\Edge\Application\msedge.exe"
:chromium_known
if defined CHROMIUM_PATH echo [launch] chromium: "%CHROMIUM_PATH%"
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
rem Failures: a named error on stderr, then :fail (exit code 1; the pause on a double click).
:unc_path
>&2 echo [launch] error: launch.bat cannot run from a network path ("%ROOT%"): Windows' cmd cannot use it as the current folder.
>&2 echo [launch] Copy the folder to a local drive, or map the share to a drive letter, and start launch.bat there.
goto fail
:cd_failed
>&2 echo [launch] error: cannot enter the folder of launch.bat ("%ROOT%"). Move the folder to a path without %% signs and start launch.bat there.
goto fail
:incomplete
>&2 echo [launch] error: "%CD%\core\launcher.py" is missing: the studio's files are incomplete. Download or copy them again.
goto fail
:not_a_venv
>&2 echo [launch] error: "%VENV%" exists but holds no venv. Delete it and run again.
goto fail
:venv_failed
>&2 echo [launch] error: could not create the venv with %PY_SHOWN%. Delete "%VENV%" and run again.
goto fail
:venv_broken
>&2 echo [launch] error: the venv's Python does not run ("%VENV%\Scripts\python.exe"; a missing DLL, or the Python it was made from was removed or updated). Delete "%VENV%" and run again.
goto fail
:gui_failed
>&2 echo [launch] error: the GUI stopped with exit code %GUI_RC% (see its messages above).
goto fail
:fail
if "%MODE%"=="run" if defined DOUBLE_CLICK pause
exit /b 1

rem ---------------------------------------------------------------------------
rem sys_py ARGS...: run PY_CMD with constant arguments (no paths: `call` would mangle % and ^);
rem a .bat/.cmd (a pyenv-win shim) must be run with `call`, else it never returns here.
:sys_py
if defined PY_CALL goto sys_py_call
%PY_CMD% %*
exit /b %errorlevel%
:sys_py_call
call %PY_CMD% %*
exit /b %errorlevel%

rem launcher ARGS...: core\launcher.py's answer (its first line of stdout) in OUT, its exit code
rem in OUT_RC; its explanations (stderr) are shown as they come.
:launcher
set "OUT="
call :sys_py core\launcher.py %* >"%OUT_FILE%"
set "OUT_RC=%errorlevel%"
if exist "%OUT_FILE%" set /p OUT=<"%OUT_FILE%"
if exist "%OUT_FILE%" del "%OUT_FILE%"
exit /b 0

rem choose_build: BUILD (cpu, cu126, cu130, ...), VARIANT, and for a build that is not PyPI's,
rem TORCH_INDEX and TORCH_PIN (the torch requirement of requirements.txt).
:choose_build
call :launcher choose-build
set "BUILD=%OUT%"
if "%OUT_RC%"=="3" goto build_none
if not "%OUT_RC%"=="0" goto build_failed
if not defined BUILD goto build_failed
set "VARIANT=cuda"
if "%BUILD%"=="cpu" set "VARIANT=cpu"
call :launcher torch-index %BUILD%
if not "%OUT_RC%"=="0" goto build_failed
set "TORCH_INDEX=%OUT%"
set "TORCH_PIN="
if not defined TORCH_INDEX exit /b 0
call :launcher torch-pin requirements.txt %BUILD%
if not "%OUT_RC%"=="0" goto pin_failed
set "TORCH_PIN=%OUT%"
exit /b 0
:build_none
>&2 echo [launch] error: no PyTorch build can use this NVIDIA GPU (see above); nothing was installed.
exit /b 1
:build_failed
>&2 echo [launch] error: could not choose the PyTorch build (see above).
exit /b 1
:pin_failed
>&2 echo [launch] error: requirements.txt must pin torch (torch==VERSION).
exit /b 1

rem ensure (ENSURE_NAME, STAMP_FILE, INSTALL, STAMP_FILES): install unless the stamp matches.
:ensure
set "NEW_STAMP="
set "OLD_STAMP="
call :launcher stamp %BUILD% %STAMP_FILES%
set "NEW_STAMP=%OUT%"
if not "%OUT_RC%"=="0" goto stamp_failed
if not defined NEW_STAMP goto stamp_failed
if exist "%STAMP_FILE%" set /p OLD_STAMP=<"%STAMP_FILE%"
if not defined OLD_STAMP goto ensure_install
if not "%OLD_STAMP%"=="%NEW_STAMP%" goto ensure_install
echo [launch] %ENSURE_NAME% unchanged (the stamp matches), skipping install
exit /b 0
:ensure_install
echo [launch] installing %ENSURE_NAME% (%BUILD%) with pip; the first time takes several minutes
if exist "%STAMP_FILE%" del "%STAMP_FILE%"
call :%INSTALL%
if not "%errorlevel%"=="0" goto install_failed
>"%STAMP_FILE%" echo %NEW_STAMP%
exit /b 0
:stamp_failed
>&2 echo [launch] error: could not compute the requirements stamp (see above).
exit /b 1
:install_failed
>&2 echo [launch] error: installing %ENSURE_NAME% failed (see pip's message above); fix it and run again.
exit /b 1

:install_main
if not defined TORCH_INDEX goto install_main_rest
rem The chosen build first, from PyTorch's index; requirements.txt's pin then accepts it
rem (torch==2.13.0 matches 2.13.0+cu126).
"%VENV_PY%" -m pip install --disable-pip-version-check "%TORCH_PIN%" --index-url "%TORCH_INDEX%"
if not "%errorlevel%"=="0" exit /b 1
:install_main_rest
if "%VARIANT%"=="cuda" goto install_main_requirements
rem Back to the CPU: the GPU onnxruntime goes, and with it the module both packages ship.
"%VENV_PY%" -m pip show -q onnxruntime-gpu >nul 2>nul
if not "%errorlevel%"=="0" goto install_main_requirements
"%VENV_PY%" -m pip uninstall -y onnxruntime onnxruntime-gpu
if not "%errorlevel%"=="0" exit /b 1
:install_main_requirements
"%VENV_PY%" -m pip install --disable-pip-version-check -r requirements.txt
if not "%errorlevel%"=="0" exit /b 1
if not "%VARIANT%"=="cuda" exit /b 0
rem onnxruntime and onnxruntime-gpu ship the same module: remove both, add the GPU one.
"%VENV_PY%" -m pip uninstall -y onnxruntime onnxruntime-gpu
if not "%errorlevel%"=="0" exit /b 1
"%VENV_PY%" -m pip install --disable-pip-version-check -r requirements-cuda.txt
if not "%errorlevel%"=="0" exit /b 1
exit /b 0

:install_test
"%VENV_PY%" -m pip install --disable-pip-version-check -r requirements-test.txt
if not "%errorlevel%"=="0" exit /b 1
exit /b 0

rem ---------------------------------------------------------------------------
rem find_python: PY_CMD (and PY_CALL for a .bat/.cmd) of a Python that core\launcher.py
rem python-ok accepts; PYTHON when set, else the first of py -3.11, py -3.12, py -3.13, python.
:find_python
if not defined PYTHON goto find_python_search
rem PYTHON may be given with or without quotes.
set "PY_CMD=%PYTHON:"=%"
set "PY_SHOWN="%PY_CMD%""
set "PY_CALL="
for %%I in ("%PY_CMD%") do set "PY_EXT=%%~xI"
if /i "%PY_EXT%"==".bat" set "PY_CALL=1"
if /i "%PY_EXT%"==".cmd" set "PY_CALL=1"
set "PY_CMD="%PY_CMD%""
call :python_ok && exit /b 0
>&2 echo [launch] error: PYTHON=%PY_SHOWN% cannot be used (see above). Point PYTHON at a python.exe of Python 3.11 to 3.13 (64-bit), or unset it.
exit /b 1
:find_python_search
set "PY_CALL=1"
set "PY_CMD=py -3.11"
call :python_ok && goto python_found
set "PY_CMD=py -3.12"
call :python_ok && goto python_found
set "PY_CMD=py -3.13"
call :python_ok && goto python_found
set "PY_CMD=python"
call :python_ok && goto python_found
>&2 echo [launch] error: no usable Python found (tried py -3.11, py -3.12, py -3.13 and python).
>&2 echo [launch] Install Python 3.11 (64-bit) from https://www.python.org/downloads/windows/ and tick "Add python.exe to PATH",
>&2 echo [launch] or set PYTHON=C:\path\to\python.exe to the one to use, then run launch.bat again.
exit /b 1
:python_found
set "PY_SHOWN=%PY_CMD%"
exit /b 0

rem python_ok: 0 when PY_CMD runs and core\launcher.py python-ok accepts it (it says why not).
:python_ok
call :sys_py -c "import sys" >nul 2>nul
if not "%errorlevel%"=="0" goto python_not_running
call :sys_py core\launcher.py python-ok
if not "%errorlevel%"=="0" exit /b 1
exit /b 0
:python_not_running
if not defined PYTHON exit /b 1
>&2 echo [launch] %PY_SHOWN% does not run.
exit /b 1
