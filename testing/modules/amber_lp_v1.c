// SPDX-License-Identifier: GPL-2.0-or-later
#define AMBER_LP_VERSION "v1"
#include "amber_lp_common.h"
