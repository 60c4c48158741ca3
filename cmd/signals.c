#include "cmd/signals.h"

#include <signal.h>
#include <string.h>

atomic_int cancel_requested;

static void on_signal(int sig)
{
    atomic_store(&cancel_requested, sig);
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

/* A store from a signal handler is only safe on a lock-free atomic. */
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "atomic_int must be lock-free");
