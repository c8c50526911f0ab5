; NSIS installer for Confide on Windows: a per-user install (no administrator needed) of the PyInstaller
; bundle, a Start menu entry, an optional start at sign-in, and an uninstaller that removes all of it.
; Built by installers\build-windows.ps1:  makensis /DVERSION=0.1.0 /DBUNDLE=...\dist\confide /DOUTFILE=... confide.nsi
Unicode true
!include "MUI2.nsh"

!ifndef VERSION
  !error "pass /DVERSION=<x.y.z>"
!endif
!ifndef BUNDLE
  !error "pass /DBUNDLE=<the PyInstaller folder>"
!endif
!ifndef OUTFILE
  !error "pass /DOUTFILE=<setup.exe>"
!endif

!define UNINSTALL_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\Confide"
!define RUN_KEY "Software\Microsoft\Windows\CurrentVersion\Run"

Name "Confide"
OutFile "${OUTFILE}"
InstallDir "$LOCALAPPDATA\Programs\Confide"
InstallDirRegKey HKCU "${UNINSTALL_KEY}" "InstallLocation"
RequestExecutionLevel user
SetCompressor /SOLID lzma
VIProductVersion "${VERSION}.0"
VIAddVersionKey "ProductName" "Confide"
VIAddVersionKey "FileDescription" "Confide installer"
VIAddVersionKey "FileVersion" "${VERSION}"
VIAddVersionKey "LegalCopyright" "GPL-3.0-or-later"

!define MUI_ICON "..\..\assets\confide.ico"
!define MUI_UNICON "..\..\assets\confide.ico"
!define MUI_FINISHPAGE_RUN "$INSTDIR\confide.exe"
!define MUI_FINISHPAGE_RUN_TEXT "Start Confide now"
!insertmacro MUI_PAGE_WELCOME
!insertmacro MUI_PAGE_LICENSE "license.txt"
!insertmacro MUI_PAGE_COMPONENTS
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_INSTFILES
!insertmacro MUI_PAGE_FINISH
!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_INSTFILES
!insertmacro MUI_LANGUAGE "English"

Section "Confide" SecMain
  SectionIn RO
  ; A running Confide holds its files open: ask it to quit first (no error if it is not running).
  nsExec::Exec '"$INSTDIR\confide.exe" --quit'
  SetOutPath "$INSTDIR"
  File /r "${BUNDLE}\*"
  WriteUninstaller "$INSTDIR\uninstall.exe"
  CreateShortcut "$SMPROGRAMS\Confide.lnk" "$INSTDIR\confide.exe" "" "$INSTDIR\confide.exe" 0
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayName" "Confide"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "Publisher" "Confide"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayIcon" "$INSTDIR\confide.exe"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoModify" 1
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoRepair" 1
SectionEnd

Section /o "Start Confide when I sign in" SecAutostart
  WriteRegStr HKCU "${RUN_KEY}" "Confide" '"$INSTDIR\confide.exe"'
SectionEnd

Section "Uninstall"
  nsExec::Exec '"$INSTDIR\confide.exe" --quit'
  Sleep 1000
  DeleteRegValue HKCU "${RUN_KEY}" "Confide"
  Delete "$SMPROGRAMS\Confide.lnk"
  RMDir /r "$INSTDIR"
  DeleteRegKey HKCU "${UNINSTALL_KEY}"
  ; Settings, history and the model cache are the person's data: kept, as most uninstallers do.
SectionEnd
