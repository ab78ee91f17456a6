/* A python.exe that cannot start, as Windows reports a missing DLL (STATUS_DLL_NOT_FOUND). */
#include <windows.h>
int main(void) { ExitProcess(0xC0000135); }
