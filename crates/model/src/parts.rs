//! The parts a maintenance entry can name, so the notifier that names them and the simulator's
//! ground truth that scores them use one catalogue instead of matching free text.

use serde::Serialize;

/// A replaceable part or a fleet-level cause (lot, software version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// Excitation laser module (optical).
    ExcitationLaser,
    /// Z-stage and autofocus assembly (optical).
    Autofocus,
    /// XY stage motor and encoder (mechanical).
    XyStage,
    /// Flow-cell heater of the thermal station.
    FlowcellHeater,
    /// Reagent chiller (Peltier element and fan).
    ReagentChiller,
    /// A fluidics line or valve that is clogging.
    FluidicsClog,
    /// A pump seal or fitting that leaks.
    FluidicsLeak,
    /// The fluidics pump itself (wear lowers its flow).
    FluidicsPump,
    /// Enclosure ventilation (ambient temperature inside the instrument).
    EnclosureVentilation,
    /// The reagent kit lot of the run (a fleet cause; the label is followed by the lot).
    ReagentLot,
    /// The control software (a fleet cause; the label is followed by the version).
    ControlSoftware,
}

impl Part {
    /// The label alerts and maintenance entries carry; the notifier may append a lot number or a
    /// version, so a label is matched as a prefix.
    pub fn label(self) -> &'static str {
        match self {
            Part::ExcitationLaser => "excitation laser module",
            Part::Autofocus => "Z-stage / autofocus assembly",
            Part::XyStage => "XY stage motor and encoder",
            Part::FlowcellHeater => "flow-cell heater (thermal station)",
            Part::ReagentChiller => "reagent chiller (Peltier and fan)",
            Part::FluidicsClog => "fluidics line or valve (clog)",
            Part::FluidicsLeak => "pump seal or fluidics fitting (leak)",
            Part::FluidicsPump => "fluidics pump",
            Part::EnclosureVentilation => "enclosure ventilation",
            Part::ReagentLot => "reagent kit lot",
            Part::ControlSoftware => "control software",
        }
    }

    /// Whether a suspected-part text names this part.
    pub fn named_by(self, suspected_part: &str) -> bool {
        suspected_part.starts_with(self.label())
    }

    /// The part a departing sensor metric points at; `worse_high` says whether the metric moved
    /// up (pressure rising is a clog, falling a leak). `None` for run-quality and software metrics,
    /// whose cause is a lot or a version rather than a part.
    pub fn for_metric(metric: &str, worse_high: bool) -> Option<Part> {
        Some(match metric {
            "laser_power_mw" => Part::ExcitationLaser,
            "focus_fwhm_px" | "focus_z_offset_um" => Part::Autofocus,
            "stage_position_error_um" | "stage_motor_current_a" => Part::XyStage,
            "flowcell_temp_deviation_c" | "flowcell_temp_c" => Part::FlowcellHeater,
            "chiller_temp_c" => Part::ReagentChiller,
            "fluidics_pressure_kpa" if worse_high => Part::FluidicsClog,
            "fluidics_pressure_kpa" => Part::FluidicsLeak,
            "flow_rate_ul_min" => Part::FluidicsPump,
            "ambient_temp_c" => Part::EnclosureVentilation,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_direction_separates_clog_from_leak() {
        assert_eq!(
            Part::for_metric("fluidics_pressure_kpa", true),
            Some(Part::FluidicsClog)
        );
        assert_eq!(
            Part::for_metric("fluidics_pressure_kpa", false),
            Some(Part::FluidicsLeak)
        );
        assert!(Part::ReagentLot.named_by("reagent kit lot SBS-20991"));
        assert!(!Part::FluidicsPump.named_by("pump seal or fluidics fitting (leak)"));
    }
}
