@echo off
rem Start the web UI on Windows (AUTOMATIC1111-compatible launcher). Put your settings in webui-user.bat.
rem Launcher flags (in COMMANDLINE_ARGS or on the command line): --skip-prepare-environment, --skip-install,
rem --skip-torch-cuda-test, --skip-python-version-check, --reinstall-torch, --exit.
setlocal
cd /d "%~dp0"

if exist webui.settings.bat call webui.settings.bat
if not defined PYTHON (set PYTHON=python)
if not defined VENV_DIR (set "VENV_DIR=%~dp0venv")
if not defined REQS_FILE (set REQS_FILE=requirements.txt)
if not defined TORCH_COMMAND (set "TORCH_COMMAND=pip install torch==2.14.1 torchvision==0.29.1 --extra-index-url https://download.pytorch.org/whl/cu128")
if not defined GRADIO_ANALYTICS_ENABLED (set GRADIO_ANALYTICS_ENABLED=False)
set ERROR_REPORTING=FALSE
set PIP_IGNORE_INSTALLED=0
set "LAUNCH_CHECK=%~dp0modules\launch_check.py"
mkdir tmp 2>NUL

rem 1. Launcher flags.
set SKIP_PREPARE=
set SKIP_INSTALL=
set SKIP_CUDA_TEST=
set SKIP_PYTHON_CHECK=
set REINSTALL_TORCH=
set EXIT_AFTER=
for %%a in (%COMMANDLINE_ARGS% %*) do (
    if "%%~a"=="--skip-prepare-environment" set SKIP_PREPARE=1
    if "%%~a"=="--skip-install" set SKIP_INSTALL=1
    if "%%~a"=="--skip-torch-cuda-test" set SKIP_CUDA_TEST=1
    if "%%~a"=="--skip-python-version-check" set SKIP_PYTHON_CHECK=1
    if "%%~a"=="--reinstall-torch" set REINSTALL_TORCH=1
    if "%%~a"=="--exit" set EXIT_AFTER=1
)

rem 2. Python: it must run, and be 3.11 to 3.13.
%PYTHON% -c "" >tmp\stdout.txt 2>tmp\stderr.txt
if %ERRORLEVEL% neq 0 (
    echo Couldn't launch python: "%PYTHON%". Install Python 3.11, 3.12 or 3.13, or set PYTHON in webui-user.bat.
    goto :show_stdout_stderr
)
call :check_python
if %ERRORLEVEL% neq 0 goto :launch_failed

rem 3. The venv: create it if missing, then activate it. VENV_DIR=- or SKIP_VENV=1 uses PYTHON as it is.
if ["%VENV_DIR%"] == ["-"] goto :skip_venv
if ["%SKIP_VENV%"] == ["1"] goto :skip_venv
if exist "%VENV_DIR%\Scripts\Python.exe" goto :activate_venv
echo Creating venv in %VENV_DIR%
%PYTHON% -m venv "%VENV_DIR%" >tmp\stdout.txt 2>tmp\stderr.txt
if %ERRORLEVEL% neq 0 (
    echo Unable to create the venv in "%VENV_DIR%".
    goto :show_stdout_stderr
)

:activate_venv
set PYTHON="%VENV_DIR%\Scripts\Python.exe"
call "%VENV_DIR%\Scripts\activate.bat"
echo Using venv %VENV_DIR%
call :check_python
if %ERRORLEVEL% neq 0 goto :launch_failed

:skip_venv
if defined SKIP_PREPARE (
    echo Skipping the environment checks [--skip-prepare-environment]
    goto :prepared
)

rem 4. torch: installed with TORCH_COMMAND only when "import torch" fails, or with --reinstall-torch.
if defined REINSTALL_TORCH goto :install_torch
%PYTHON% "%LAUNCH_CHECK%" torch >tmp\torch.txt 2>&1
if %ERRORLEVEL% equ 0 goto :torch_ready
:install_torch
if defined SKIP_INSTALL (
    echo WARNING: torch is not importable, and --skip-install forbids installing it.
    goto :check_requirements
)
echo Installing torch: %TORCH_COMMAND%
%PYTHON% -m %TORCH_COMMAND%
if %ERRORLEVEL% neq 0 (
    echo Installing torch failed. Check TORCH_COMMAND: %TORCH_COMMAND%
    goto :launch_failed
)
%PYTHON% "%LAUNCH_CHECK%" torch >tmp\torch.txt 2>&1
if %ERRORLEVEL% neq 0 (
    type tmp\torch.txt
    echo torch was installed but cannot be imported.
    goto :launch_failed
)
:torch_ready
type tmp\torch.txt

rem 5. CUDA check: only when an NVIDIA driver is present and torch cannot use it.
if defined SKIP_CUDA_TEST goto :check_requirements
where nvidia-smi >NUL 2>NUL
if %ERRORLEVEL% neq 0 goto :check_requirements
findstr /C:"cuda_available=0" tmp\torch.txt >NUL
if %ERRORLEVEL% neq 0 goto :check_requirements
echo Torch is not able to use the NVIDIA GPU. Add --skip-torch-cuda-test to COMMANDLINE_ARGS to run without it,
echo or set TORCH_COMMAND to a CUDA build of torch and start with --reinstall-torch.
goto :launch_failed

rem 6. Requirements: pip runs only when one of them is not satisfied.
:check_requirements
%PYTHON% "%LAUNCH_CHECK%" requirements "%REQS_FILE%"
if %ERRORLEVEL% equ 0 (
    echo Requirements satisfied [%REQS_FILE%]
    goto :prepared
)
if defined SKIP_INSTALL (
    echo WARNING: requirements not satisfied, not installing them [--skip-install].
    goto :prepared
)
echo Installing requirements from %REQS_FILE%
%PYTHON% -m pip install --prefer-binary -r "%REQS_FILE%"
if %ERRORLEVEL% neq 0 (
    echo Installing the requirements from %REQS_FILE% failed.
    goto :launch_failed
)

:prepared
if defined EXIT_AFTER (
    echo Exiting because of --exit
    exit /b 0
)

rem 7. Start the app; start it again while tmp\restart exists.
:launch
del /q tmp\restart 2>NUL
echo Launching Web UI with arguments: %COMMANDLINE_ARGS% %*
%PYTHON% webui.py %COMMANDLINE_ARGS% %*
if %ERRORLEVEL% neq 0 goto :launch_failed
if exist tmp\restart goto :launch
exit /b 0

:check_python
%PYTHON% "%LAUNCH_CHECK%" python
if %ERRORLEVEL% equ 0 exit /b 0
if %ERRORLEVEL% equ 3 if defined SKIP_PYTHON_CHECK exit /b 0
echo Python 3.11 to 3.13 is required. Set PYTHON in webui-user.bat (or add --skip-python-version-check if it is newer).
exit /b 1

:show_stdout_stderr
echo.
echo exit code: %ERRORLEVEL%
for /f %%i in ("tmp\stdout.txt") do set size=%%~zi
if %size% equ 0 goto :show_stderr
echo.
echo stdout:
type tmp\stdout.txt
:show_stderr
for /f %%i in ("tmp\stderr.txt") do set size=%%~zi
if %size% equ 0 goto :launch_failed
echo.
echo stderr:
type tmp\stderr.txt

:launch_failed
echo.
echo Launch unsuccessful. Exiting.
pause
exit /b 1
