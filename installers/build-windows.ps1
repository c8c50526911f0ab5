# Build Confide for Windows: the PyInstaller one-folder bundle, then an NSIS installer from it.
#   installers\build-windows [-Out build\installers]        (from PowerShell, in the repository)
# Needs: Python 3.11+ with the project installed in .venv (pip install -e ".[test]" brings PyInstaller),
# and NSIS 3 (makensis on PATH, e.g. `winget install NSIS.NSIS`).
param([string]$Out = "build\installers")
$ErrorActionPreference = "Stop"
Set-Location (Split-Path -Parent $PSScriptRoot)
$python = if ($env:PYTHON) { $env:PYTHON } else { ".venv\Scripts\python.exe" }
New-Item -ItemType Directory -Force -Path $Out | Out-Null
$Out = (Resolve-Path $Out).Path

& $python -m PyInstaller --noconfirm --log-level WARN --distpath "$Out\dist" --workpath "$Out\work" installers\confide.spec
if ($LASTEXITCODE -ne 0) { throw "PyInstaller failed ($LASTEXITCODE)" }

$version = & $python -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])"
$setup = "$Out\Confide-$version-setup.exe"
& makensis /V2 "/DVERSION=$version" "/DBUNDLE=$Out\dist\confide" "/DOUTFILE=$setup" installers\windows\confide.nsi
if ($LASTEXITCODE -ne 0) { throw "makensis failed ($LASTEXITCODE)" }
Write-Output "built $setup"
