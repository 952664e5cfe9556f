@echo off
rem Your settings for webui.bat. Leave a value empty to use the default.
rem   PYTHON            Python to create the venv with (default: python). 3.11 to 3.13 are supported.
rem   GIT               not needed by this web UI; kept so that existing webui-user.bat files keep working
rem   VENV_DIR          venv folder (default: venv beside webui.bat); "-" = use no venv
rem   COMMANDLINE_ARGS  arguments for webui.py, for example: --api --listen --port 7861
rem Optional: TORCH_COMMAND (how torch is installed), REQS_FILE (default requirements.txt), SKIP_VENV=1.

set PYTHON=
set GIT=
set VENV_DIR=
set COMMANDLINE_ARGS=

call webui.bat %*
