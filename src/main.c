#include <stdio.h>
int main(void)
{
    puts("tms: not yet wired");
    return 0;
}
