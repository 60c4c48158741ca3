#include "cmd/signals.h"

#include <signal.h>
#include <string.h>

volatile sig_atomic_t cancel_requested;

static void on_signal(int sig)
{
    cancel_requested = sig;
}

void install_cancel_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}
