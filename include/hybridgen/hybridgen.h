// Umbrella header of libhybridgen.
#pragma once
#include "hybridgen/chat.h"
#include "hybridgen/config.h"
#include "hybridgen/engine.h"
#include "hybridgen/error.h"
