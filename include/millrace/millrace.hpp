// The millrace public API: include this one header to embed the engine.
#pragma once

#include "millrace/batch.hpp"
#include "millrace/errors.hpp"
#include "millrace/pipeline.hpp"
#include "millrace/report.hpp"
#include "millrace/stats.hpp"
