// Behavioural simulation model of the Lattice ECP5 embedded block RAM DP16KD.
//
// Written for this project from the EBR description in Lattice TN1264 ("ECP5 and ECP5-5G
// Memory Usage Guide"). Yosys 0.70 ships DP16KD only as a black box, so a gate-level netlist
// from synth_ecp5 cannot be simulated without a model. This one covers what Yosys' ECP5 BRAM
// mapping (techlibs/lattice/brams_map_16kd.v: $__DP16KD_ and $__PDPW16KD_) instantiates:
//   * DATA_WIDTH_A / DATA_WIDTH_B in 1, 2, 4, 9, 18 (true dual port), and the pseudo dual
//     port form with DATA_WIDTH_A = 36 (write: DIA = bits 17:0, DIB = bits 35:18, byte
//     enables on ADA[3:0]) and DATA_WIDTH_B = 36 (read: DOA = bits 17:0, DOB = bits 35:18);
//   * 18-bit ports: byte (9-bit) write enables on AD[1:0];
//   * REGMODE "NOREG" (data out one clock after the address), WRITEMODE NORMAL (output holds
//     during a write), WRITETHROUGH (output shows the written data) and READBEFOREWRITE;
//   * CE gates the port, CS[2:0] must match CSDECODE "0b000", CLKAMUX / CLKBMUX may invert;
//   * INITVAL_00..3F (the 18-bit word w = 16 * row + i is INITVAL_row[20 * i +: 18]).
// Storage is 2048 9-bit bytes; 9/18/36-bit ports address whole bytes, 1/2/4-bit ports the
// 8 data bits of each byte (the parity bit is not reachable at those widths). A write on one
// port and a read of the same location on the other in the same cycle read the old data.
// Not modelled, stopping the simulation at start or when used: REGMODE "OUTREG", a CSDECODE
// other than "0b000", inverted data/control pins (the *MUX parameters other than the clocks),
// mixing a 1/2/4-bit port with a 9/18/36-bit port, RSTA/RSTB asserted, and a deselected CS.

module DP16KD (
    DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0,
    ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0,
    CEA, OCEA, CLKA, WEA, RSTA,
    CSA2, CSA1, CSA0,
    DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0,
    DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0,
    ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0,
    CEB, OCEB, CLKB, WEB, RSTB,
    CSB2, CSB1, CSB0,
    DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0
);
    parameter DATA_WIDTH_A = 18;
    parameter DATA_WIDTH_B = 18;
    parameter REGMODE_A = "NOREG";
    parameter REGMODE_B = "NOREG";
    parameter RESETMODE = "SYNC";
    parameter ASYNC_RESET_RELEASE = "SYNC";
    parameter CSDECODE_A = "0b000";
    parameter CSDECODE_B = "0b000";
    parameter WRITEMODE_A = "NORMAL";
    parameter WRITEMODE_B = "NORMAL";
    parameter CLKAMUX = "CLKA";
    parameter CLKBMUX = "CLKB";
    parameter DIA17MUX = "DIA17";
    parameter DIA16MUX = "DIA16";
    parameter DIA15MUX = "DIA15";
    parameter DIA14MUX = "DIA14";
    parameter DIA13MUX = "DIA13";
    parameter DIA12MUX = "DIA12";
    parameter DIA11MUX = "DIA11";
    parameter DIA10MUX = "DIA10";
    parameter DIA9MUX = "DIA9";
    parameter DIA8MUX = "DIA8";
    parameter DIA7MUX = "DIA7";
    parameter DIA6MUX = "DIA6";
    parameter DIA5MUX = "DIA5";
    parameter DIA4MUX = "DIA4";
    parameter DIA3MUX = "DIA3";
    parameter DIA2MUX = "DIA2";
    parameter DIA1MUX = "DIA1";
    parameter DIA0MUX = "DIA0";
    parameter ADA13MUX = "ADA13";
    parameter ADA12MUX = "ADA12";
    parameter ADA11MUX = "ADA11";
    parameter ADA10MUX = "ADA10";
    parameter ADA9MUX = "ADA9";
    parameter ADA8MUX = "ADA8";
    parameter ADA7MUX = "ADA7";
    parameter ADA6MUX = "ADA6";
    parameter ADA5MUX = "ADA5";
    parameter ADA4MUX = "ADA4";
    parameter ADA3MUX = "ADA3";
    parameter ADA2MUX = "ADA2";
    parameter ADA1MUX = "ADA1";
    parameter ADA0MUX = "ADA0";
    parameter CEAMUX = "CEA";
    parameter OCEAMUX = "OCEA";
    parameter WEAMUX = "WEA";
    parameter RSTAMUX = "RSTA";
    parameter CSA2MUX = "CSA2";
    parameter CSA1MUX = "CSA1";
    parameter CSA0MUX = "CSA0";
    parameter DOA17MUX = "DOA17";
    parameter DOA16MUX = "DOA16";
    parameter DOA15MUX = "DOA15";
    parameter DOA14MUX = "DOA14";
    parameter DOA13MUX = "DOA13";
    parameter DOA12MUX = "DOA12";
    parameter DOA11MUX = "DOA11";
    parameter DOA10MUX = "DOA10";
    parameter DOA9MUX = "DOA9";
    parameter DOA8MUX = "DOA8";
    parameter DOA7MUX = "DOA7";
    parameter DOA6MUX = "DOA6";
    parameter DOA5MUX = "DOA5";
    parameter DOA4MUX = "DOA4";
    parameter DOA3MUX = "DOA3";
    parameter DOA2MUX = "DOA2";
    parameter DOA1MUX = "DOA1";
    parameter DOA0MUX = "DOA0";
    parameter DIB17MUX = "DIB17";
    parameter DIB16MUX = "DIB16";
    parameter DIB15MUX = "DIB15";
    parameter DIB14MUX = "DIB14";
    parameter DIB13MUX = "DIB13";
    parameter DIB12MUX = "DIB12";
    parameter DIB11MUX = "DIB11";
    parameter DIB10MUX = "DIB10";
    parameter DIB9MUX = "DIB9";
    parameter DIB8MUX = "DIB8";
    parameter DIB7MUX = "DIB7";
    parameter DIB6MUX = "DIB6";
    parameter DIB5MUX = "DIB5";
    parameter DIB4MUX = "DIB4";
    parameter DIB3MUX = "DIB3";
    parameter DIB2MUX = "DIB2";
    parameter DIB1MUX = "DIB1";
    parameter DIB0MUX = "DIB0";
    parameter ADB13MUX = "ADB13";
    parameter ADB12MUX = "ADB12";
    parameter ADB11MUX = "ADB11";
    parameter ADB10MUX = "ADB10";
    parameter ADB9MUX = "ADB9";
    parameter ADB8MUX = "ADB8";
    parameter ADB7MUX = "ADB7";
    parameter ADB6MUX = "ADB6";
    parameter ADB5MUX = "ADB5";
    parameter ADB4MUX = "ADB4";
    parameter ADB3MUX = "ADB3";
    parameter ADB2MUX = "ADB2";
    parameter ADB1MUX = "ADB1";
    parameter ADB0MUX = "ADB0";
    parameter CEBMUX = "CEB";
    parameter OCEBMUX = "OCEB";
    parameter WEBMUX = "WEB";
    parameter RSTBMUX = "RSTB";
    parameter CSB2MUX = "CSB2";
    parameter CSB1MUX = "CSB1";
    parameter CSB0MUX = "CSB0";
    parameter DOB17MUX = "DOB17";
    parameter DOB16MUX = "DOB16";
    parameter DOB15MUX = "DOB15";
    parameter DOB14MUX = "DOB14";
    parameter DOB13MUX = "DOB13";
    parameter DOB12MUX = "DOB12";
    parameter DOB11MUX = "DOB11";
    parameter DOB10MUX = "DOB10";
    parameter DOB9MUX = "DOB9";
    parameter DOB8MUX = "DOB8";
    parameter DOB7MUX = "DOB7";
    parameter DOB6MUX = "DOB6";
    parameter DOB5MUX = "DOB5";
    parameter DOB4MUX = "DOB4";
    parameter DOB3MUX = "DOB3";
    parameter DOB2MUX = "DOB2";
    parameter DOB1MUX = "DOB1";
    parameter DOB0MUX = "DOB0";
    parameter WID = 0;
    parameter GSR = "ENABLED";
    parameter INIT_DATA = "STATIC";
    parameter INITVAL_00 = 320'h0;
    parameter INITVAL_01 = 320'h0;
    parameter INITVAL_02 = 320'h0;
    parameter INITVAL_03 = 320'h0;
    parameter INITVAL_04 = 320'h0;
    parameter INITVAL_05 = 320'h0;
    parameter INITVAL_06 = 320'h0;
    parameter INITVAL_07 = 320'h0;
    parameter INITVAL_08 = 320'h0;
    parameter INITVAL_09 = 320'h0;
    parameter INITVAL_0A = 320'h0;
    parameter INITVAL_0B = 320'h0;
    parameter INITVAL_0C = 320'h0;
    parameter INITVAL_0D = 320'h0;
    parameter INITVAL_0E = 320'h0;
    parameter INITVAL_0F = 320'h0;
    parameter INITVAL_10 = 320'h0;
    parameter INITVAL_11 = 320'h0;
    parameter INITVAL_12 = 320'h0;
    parameter INITVAL_13 = 320'h0;
    parameter INITVAL_14 = 320'h0;
    parameter INITVAL_15 = 320'h0;
    parameter INITVAL_16 = 320'h0;
    parameter INITVAL_17 = 320'h0;
    parameter INITVAL_18 = 320'h0;
    parameter INITVAL_19 = 320'h0;
    parameter INITVAL_1A = 320'h0;
    parameter INITVAL_1B = 320'h0;
    parameter INITVAL_1C = 320'h0;
    parameter INITVAL_1D = 320'h0;
    parameter INITVAL_1E = 320'h0;
    parameter INITVAL_1F = 320'h0;
    parameter INITVAL_20 = 320'h0;
    parameter INITVAL_21 = 320'h0;
    parameter INITVAL_22 = 320'h0;
    parameter INITVAL_23 = 320'h0;
    parameter INITVAL_24 = 320'h0;
    parameter INITVAL_25 = 320'h0;
    parameter INITVAL_26 = 320'h0;
    parameter INITVAL_27 = 320'h0;
    parameter INITVAL_28 = 320'h0;
    parameter INITVAL_29 = 320'h0;
    parameter INITVAL_2A = 320'h0;
    parameter INITVAL_2B = 320'h0;
    parameter INITVAL_2C = 320'h0;
    parameter INITVAL_2D = 320'h0;
    parameter INITVAL_2E = 320'h0;
    parameter INITVAL_2F = 320'h0;
    parameter INITVAL_30 = 320'h0;
    parameter INITVAL_31 = 320'h0;
    parameter INITVAL_32 = 320'h0;
    parameter INITVAL_33 = 320'h0;
    parameter INITVAL_34 = 320'h0;
    parameter INITVAL_35 = 320'h0;
    parameter INITVAL_36 = 320'h0;
    parameter INITVAL_37 = 320'h0;
    parameter INITVAL_38 = 320'h0;
    parameter INITVAL_39 = 320'h0;
    parameter INITVAL_3A = 320'h0;
    parameter INITVAL_3B = 320'h0;
    parameter INITVAL_3C = 320'h0;
    parameter INITVAL_3D = 320'h0;
    parameter INITVAL_3E = 320'h0;
    parameter INITVAL_3F = 320'h0;

    input DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0;
    input ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0;
    input CEA, OCEA, CLKA, WEA, RSTA, CSA2, CSA1, CSA0;
    output DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0;
    input DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0;
    input ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0;
    input CEB, OCEB, CLKB, WEB, RSTB, CSB2, CSB1, CSB0;
    output DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0;

    reg [8:0] mem [0:2047];

    function automatic is_byte_width(input integer w);
        is_byte_width = w == 9 || w == 18 || w == 36;
    endfunction

    function automatic is_width(input integer w, input integer allow36);
        is_width = w == 1 || w == 2 || w == 4 || w == 9 || w == 18 || (allow36 != 0 && w == 36);
    endfunction

    // read at a port of width w (36: the PDPW read, bytes 0-1 only; bytes 2-3 in rd_hi)
    function automatic [17:0] rd(input integer w, input [13:0] ad);
        integer j;
        begin
            rd = 18'b0;
            if (w == 36)
                rd = {mem[{ad[13:5], 2'd1}], mem[{ad[13:5], 2'd0}]};
            else if (w == 18)
                rd = {mem[{ad[13:4], 1'b1}], mem[{ad[13:4], 1'b0}]};
            else if (w == 9)
                rd = {9'b0, mem[ad[13:3]]};
            else
                for (j = 0; j < w; j = j + 1)
                    rd[j] = mem[((ad & ~(w - 1)) + j) >> 3][((ad & ~(w - 1)) + j) & 7];
        end
    endfunction

    task bad_mux(input [8 * 16 - 1:0] name);
        $fatal(1, "DP16KD model: %0s other than its pin (inversion) is not modelled", name);
    endtask

    task load_row(input integer row, input [319:0] v);
        integer i;
        for (i = 0; i < 16; i = i + 1)
            {mem[2 * (16 * row + i) + 1], mem[2 * (16 * row + i)]} = v[20 * i +: 18];
    endtask

    initial begin
        if (!is_width(DATA_WIDTH_A, 1) || !is_width(DATA_WIDTH_B, 1))
            $fatal(1, "DP16KD model: DATA_WIDTH_A/B = %0d/%0d not supported", DATA_WIDTH_A,
                   DATA_WIDTH_B);
        if (is_byte_width(DATA_WIDTH_A) != is_byte_width(DATA_WIDTH_B))
            $fatal(1, "DP16KD model: mixing a 1/2/4-bit port with a 9/18/36-bit port is not modelled");
        if (REGMODE_A != "NOREG" || REGMODE_B != "NOREG")
            $fatal(1, "DP16KD model: REGMODE %0s/%0s: only NOREG is modelled", REGMODE_A, REGMODE_B);
        if (CSDECODE_A != "0b000" || CSDECODE_B != "0b000")
            $fatal(1, "DP16KD model: CSDECODE other than 0b000 is not modelled");
        if (WRITEMODE_A != "NORMAL" && WRITEMODE_A != "WRITETHROUGH" && WRITEMODE_A != "READBEFOREWRITE")
            $fatal(1, "DP16KD model: WRITEMODE_A = %0s", WRITEMODE_A);
        if (WRITEMODE_B != "NORMAL" && WRITEMODE_B != "WRITETHROUGH" && WRITEMODE_B != "READBEFOREWRITE")
            $fatal(1, "DP16KD model: WRITEMODE_B = %0s", WRITEMODE_B);
        if (CLKAMUX != "CLKA" && CLKAMUX != "INV")
            $fatal(1, "DP16KD model: CLKAMUX = %0s", CLKAMUX);
        if (CLKBMUX != "CLKB" && CLKBMUX != "INV")
            $fatal(1, "DP16KD model: CLKBMUX = %0s", CLKBMUX);
        if (DIA17MUX != "DIA17") bad_mux("DIA17MUX");
        if (DIA16MUX != "DIA16") bad_mux("DIA16MUX");
        if (DIA15MUX != "DIA15") bad_mux("DIA15MUX");
        if (DIA14MUX != "DIA14") bad_mux("DIA14MUX");
        if (DIA13MUX != "DIA13") bad_mux("DIA13MUX");
        if (DIA12MUX != "DIA12") bad_mux("DIA12MUX");
        if (DIA11MUX != "DIA11") bad_mux("DIA11MUX");
        if (DIA10MUX != "DIA10") bad_mux("DIA10MUX");
        if (DIA9MUX != "DIA9") bad_mux("DIA9MUX");
        if (DIA8MUX != "DIA8") bad_mux("DIA8MUX");
        if (DIA7MUX != "DIA7") bad_mux("DIA7MUX");
        if (DIA6MUX != "DIA6") bad_mux("DIA6MUX");
        if (DIA5MUX != "DIA5") bad_mux("DIA5MUX");
        if (DIA4MUX != "DIA4") bad_mux("DIA4MUX");
        if (DIA3MUX != "DIA3") bad_mux("DIA3MUX");
        if (DIA2MUX != "DIA2") bad_mux("DIA2MUX");
        if (DIA1MUX != "DIA1") bad_mux("DIA1MUX");
        if (DIA0MUX != "DIA0") bad_mux("DIA0MUX");
        if (ADA13MUX != "ADA13") bad_mux("ADA13MUX");
        if (ADA12MUX != "ADA12") bad_mux("ADA12MUX");
        if (ADA11MUX != "ADA11") bad_mux("ADA11MUX");
        if (ADA10MUX != "ADA10") bad_mux("ADA10MUX");
        if (ADA9MUX != "ADA9") bad_mux("ADA9MUX");
        if (ADA8MUX != "ADA8") bad_mux("ADA8MUX");
        if (ADA7MUX != "ADA7") bad_mux("ADA7MUX");
        if (ADA6MUX != "ADA6") bad_mux("ADA6MUX");
        if (ADA5MUX != "ADA5") bad_mux("ADA5MUX");
        if (ADA4MUX != "ADA4") bad_mux("ADA4MUX");
        if (ADA3MUX != "ADA3") bad_mux("ADA3MUX");
        if (ADA2MUX != "ADA2") bad_mux("ADA2MUX");
        if (ADA1MUX != "ADA1") bad_mux("ADA1MUX");
        if (ADA0MUX != "ADA0") bad_mux("ADA0MUX");
        if (CEAMUX != "CEA") bad_mux("CEAMUX");
        if (OCEAMUX != "OCEA") bad_mux("OCEAMUX");
        if (WEAMUX != "WEA") bad_mux("WEAMUX");
        if (RSTAMUX != "RSTA") bad_mux("RSTAMUX");
        if (CSA2MUX != "CSA2") bad_mux("CSA2MUX");
        if (CSA1MUX != "CSA1") bad_mux("CSA1MUX");
        if (CSA0MUX != "CSA0") bad_mux("CSA0MUX");
        if (DOA17MUX != "DOA17") bad_mux("DOA17MUX");
        if (DOA16MUX != "DOA16") bad_mux("DOA16MUX");
        if (DOA15MUX != "DOA15") bad_mux("DOA15MUX");
        if (DOA14MUX != "DOA14") bad_mux("DOA14MUX");
        if (DOA13MUX != "DOA13") bad_mux("DOA13MUX");
        if (DOA12MUX != "DOA12") bad_mux("DOA12MUX");
        if (DOA11MUX != "DOA11") bad_mux("DOA11MUX");
        if (DOA10MUX != "DOA10") bad_mux("DOA10MUX");
        if (DOA9MUX != "DOA9") bad_mux("DOA9MUX");
        if (DOA8MUX != "DOA8") bad_mux("DOA8MUX");
        if (DOA7MUX != "DOA7") bad_mux("DOA7MUX");
        if (DOA6MUX != "DOA6") bad_mux("DOA6MUX");
        if (DOA5MUX != "DOA5") bad_mux("DOA5MUX");
        if (DOA4MUX != "DOA4") bad_mux("DOA4MUX");
        if (DOA3MUX != "DOA3") bad_mux("DOA3MUX");
        if (DOA2MUX != "DOA2") bad_mux("DOA2MUX");
        if (DOA1MUX != "DOA1") bad_mux("DOA1MUX");
        if (DOA0MUX != "DOA0") bad_mux("DOA0MUX");
        if (DIB17MUX != "DIB17") bad_mux("DIB17MUX");
        if (DIB16MUX != "DIB16") bad_mux("DIB16MUX");
        if (DIB15MUX != "DIB15") bad_mux("DIB15MUX");
        if (DIB14MUX != "DIB14") bad_mux("DIB14MUX");
        if (DIB13MUX != "DIB13") bad_mux("DIB13MUX");
        if (DIB12MUX != "DIB12") bad_mux("DIB12MUX");
        if (DIB11MUX != "DIB11") bad_mux("DIB11MUX");
        if (DIB10MUX != "DIB10") bad_mux("DIB10MUX");
        if (DIB9MUX != "DIB9") bad_mux("DIB9MUX");
        if (DIB8MUX != "DIB8") bad_mux("DIB8MUX");
        if (DIB7MUX != "DIB7") bad_mux("DIB7MUX");
        if (DIB6MUX != "DIB6") bad_mux("DIB6MUX");
        if (DIB5MUX != "DIB5") bad_mux("DIB5MUX");
        if (DIB4MUX != "DIB4") bad_mux("DIB4MUX");
        if (DIB3MUX != "DIB3") bad_mux("DIB3MUX");
        if (DIB2MUX != "DIB2") bad_mux("DIB2MUX");
        if (DIB1MUX != "DIB1") bad_mux("DIB1MUX");
        if (DIB0MUX != "DIB0") bad_mux("DIB0MUX");
        if (ADB13MUX != "ADB13") bad_mux("ADB13MUX");
        if (ADB12MUX != "ADB12") bad_mux("ADB12MUX");
        if (ADB11MUX != "ADB11") bad_mux("ADB11MUX");
        if (ADB10MUX != "ADB10") bad_mux("ADB10MUX");
        if (ADB9MUX != "ADB9") bad_mux("ADB9MUX");
        if (ADB8MUX != "ADB8") bad_mux("ADB8MUX");
        if (ADB7MUX != "ADB7") bad_mux("ADB7MUX");
        if (ADB6MUX != "ADB6") bad_mux("ADB6MUX");
        if (ADB5MUX != "ADB5") bad_mux("ADB5MUX");
        if (ADB4MUX != "ADB4") bad_mux("ADB4MUX");
        if (ADB3MUX != "ADB3") bad_mux("ADB3MUX");
        if (ADB2MUX != "ADB2") bad_mux("ADB2MUX");
        if (ADB1MUX != "ADB1") bad_mux("ADB1MUX");
        if (ADB0MUX != "ADB0") bad_mux("ADB0MUX");
        if (CEBMUX != "CEB") bad_mux("CEBMUX");
        if (OCEBMUX != "OCEB") bad_mux("OCEBMUX");
        if (WEBMUX != "WEB") bad_mux("WEBMUX");
        if (RSTBMUX != "RSTB") bad_mux("RSTBMUX");
        if (CSB2MUX != "CSB2") bad_mux("CSB2MUX");
        if (CSB1MUX != "CSB1") bad_mux("CSB1MUX");
        if (CSB0MUX != "CSB0") bad_mux("CSB0MUX");
        if (DOB17MUX != "DOB17") bad_mux("DOB17MUX");
        if (DOB16MUX != "DOB16") bad_mux("DOB16MUX");
        if (DOB15MUX != "DOB15") bad_mux("DOB15MUX");
        if (DOB14MUX != "DOB14") bad_mux("DOB14MUX");
        if (DOB13MUX != "DOB13") bad_mux("DOB13MUX");
        if (DOB12MUX != "DOB12") bad_mux("DOB12MUX");
        if (DOB11MUX != "DOB11") bad_mux("DOB11MUX");
        if (DOB10MUX != "DOB10") bad_mux("DOB10MUX");
        if (DOB9MUX != "DOB9") bad_mux("DOB9MUX");
        if (DOB8MUX != "DOB8") bad_mux("DOB8MUX");
        if (DOB7MUX != "DOB7") bad_mux("DOB7MUX");
        if (DOB6MUX != "DOB6") bad_mux("DOB6MUX");
        if (DOB5MUX != "DOB5") bad_mux("DOB5MUX");
        if (DOB4MUX != "DOB4") bad_mux("DOB4MUX");
        if (DOB3MUX != "DOB3") bad_mux("DOB3MUX");
        if (DOB2MUX != "DOB2") bad_mux("DOB2MUX");
        if (DOB1MUX != "DOB1") bad_mux("DOB1MUX");
        if (DOB0MUX != "DOB0") bad_mux("DOB0MUX");
        load_row(0, INITVAL_00);
        load_row(1, INITVAL_01);
        load_row(2, INITVAL_02);
        load_row(3, INITVAL_03);
        load_row(4, INITVAL_04);
        load_row(5, INITVAL_05);
        load_row(6, INITVAL_06);
        load_row(7, INITVAL_07);
        load_row(8, INITVAL_08);
        load_row(9, INITVAL_09);
        load_row(10, INITVAL_0A);
        load_row(11, INITVAL_0B);
        load_row(12, INITVAL_0C);
        load_row(13, INITVAL_0D);
        load_row(14, INITVAL_0E);
        load_row(15, INITVAL_0F);
        load_row(16, INITVAL_10);
        load_row(17, INITVAL_11);
        load_row(18, INITVAL_12);
        load_row(19, INITVAL_13);
        load_row(20, INITVAL_14);
        load_row(21, INITVAL_15);
        load_row(22, INITVAL_16);
        load_row(23, INITVAL_17);
        load_row(24, INITVAL_18);
        load_row(25, INITVAL_19);
        load_row(26, INITVAL_1A);
        load_row(27, INITVAL_1B);
        load_row(28, INITVAL_1C);
        load_row(29, INITVAL_1D);
        load_row(30, INITVAL_1E);
        load_row(31, INITVAL_1F);
        load_row(32, INITVAL_20);
        load_row(33, INITVAL_21);
        load_row(34, INITVAL_22);
        load_row(35, INITVAL_23);
        load_row(36, INITVAL_24);
        load_row(37, INITVAL_25);
        load_row(38, INITVAL_26);
        load_row(39, INITVAL_27);
        load_row(40, INITVAL_28);
        load_row(41, INITVAL_29);
        load_row(42, INITVAL_2A);
        load_row(43, INITVAL_2B);
        load_row(44, INITVAL_2C);
        load_row(45, INITVAL_2D);
        load_row(46, INITVAL_2E);
        load_row(47, INITVAL_2F);
        load_row(48, INITVAL_30);
        load_row(49, INITVAL_31);
        load_row(50, INITVAL_32);
        load_row(51, INITVAL_33);
        load_row(52, INITVAL_34);
        load_row(53, INITVAL_35);
        load_row(54, INITVAL_36);
        load_row(55, INITVAL_37);
        load_row(56, INITVAL_38);
        load_row(57, INITVAL_39);
        load_row(58, INITVAL_3A);
        load_row(59, INITVAL_3B);
        load_row(60, INITVAL_3C);
        load_row(61, INITVAL_3D);
        load_row(62, INITVAL_3E);
        load_row(63, INITVAL_3F);
    end

    // ---- port A ---------------------------------------------------------------------------
    wire clk_a = CLKAMUX == "INV" ? ~CLKA : CLKA;
    wire [13:0] ad_a = {ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0};
    wire [17:0] di_a = {DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0};
    wire sel_a = {CSA2, CSA1, CSA0} == 3'b000;
    reg [17:0] do_a = 18'b0;

    always @(posedge clk_a) begin : port_a
        reg [17:0] old;
        reg [17:0] merged;
        integer j;
        // unmodelled uses, checked at the clock edge where they would act
        if (RSTA !== 1'b0)
            $fatal(1, "DP16KD model: RSTA asserted (output reset is not modelled)");
        if (CEA && !sel_a)
            $fatal(1, "DP16KD model: port A deselected (CS != 0) is not modelled");
        if (CEA && sel_a) begin
            old = rd(DATA_WIDTH_A, ad_a);
            merged = old;
            if (WEA) begin
                if (DATA_WIDTH_A == 36) begin
                    // 36-bit write port (PDPW16KD use): DIA = bytes 0-1, DIB = bytes 2-3,
                    // byte enables on ADA[3:0]
                    for (j = 0; j < 4; j = j + 1)
                        if (ad_a[j])
                            mem[{ad_a[13:5], j[1:0]}] <= j < 2 ? di_a[9 * (j % 2) +: 9]
                                                                  : di_b[9 * (j % 2) +: 9];
                end else if (DATA_WIDTH_A == 18) begin
                    for (j = 0; j < 2; j = j + 1)
                        if (ad_a[j]) begin
                            mem[{ad_a[13:4], j[0]}] <= di_a[9 * j +: 9];
                            merged[9 * j +: 9] = di_a[9 * j +: 9];
                        end
                end else if (DATA_WIDTH_A == 9) begin
                    mem[ad_a[13:3]] <= di_a[8:0];
                    merged[8:0] = di_a[8:0];
                end else begin
                    // 1, 2, 4 bits: data bits only (no parity), DATA_WIDTH_A bits from data
                    // bit AD with its low log2(width) bits cleared
                    for (j = 0; j < DATA_WIDTH_A; j = j + 1)
                        mem[((ad_a & ~(DATA_WIDTH_A - 1)) + j) >> 3][((ad_a & ~(DATA_WIDTH_A - 1)) + j) & 7]
                            <= di_a[j];
                    merged[DATA_WIDTH_A - 1:0] = di_a[DATA_WIDTH_A - 1:0];
                end
                if (WRITEMODE_A == "WRITETHROUGH")
                    do_a <= merged;
                else if (WRITEMODE_A == "READBEFOREWRITE")
                    do_a <= old;
                // NORMAL: the output keeps its value during a write
            end else begin
                do_a <= old;
            end
        end
    end

    // ---- port B ---------------------------------------------------------------------------
    wire clk_b = CLKBMUX == "INV" ? ~CLKB : CLKB;
    wire [13:0] ad_b = {ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0};
    wire [17:0] di_b = {DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0};
    wire sel_b = {CSB2, CSB1, CSB0} == 3'b000;
    reg [17:0] do_b = 18'b0;

    always @(posedge clk_b) begin : port_b
        reg [17:0] old;
        reg [17:0] merged;
        integer j;
        // unmodelled uses, checked at the clock edge where they would act
        if (RSTB !== 1'b0)
            $fatal(1, "DP16KD model: RSTB asserted (output reset is not modelled)");
        if (CEB && !sel_b)
            $fatal(1, "DP16KD model: port B deselected (CS != 0) is not modelled");
        if (DATA_WIDTH_B == 36 && WEB)
            $fatal(1, "DP16KD model: writing through a 36-bit port B is not modelled");
        if (CEB && sel_b) begin
            old = rd(DATA_WIDTH_B, ad_b);
            merged = old;
            if (WEB) begin
                if (DATA_WIDTH_B == 36) begin
                    // 36-bit write port (PDPW16KD use): DIA = bytes 0-1, DIB = bytes 2-3,
                    // byte enables on ADA[3:0]
                    for (j = 0; j < 4; j = j + 1)
                        if (ad_b[j])
                            mem[{ad_b[13:5], j[1:0]}] <= j < 2 ? di_a[9 * (j % 2) +: 9]
                                                                  : di_b[9 * (j % 2) +: 9];
                end else if (DATA_WIDTH_B == 18) begin
                    for (j = 0; j < 2; j = j + 1)
                        if (ad_b[j]) begin
                            mem[{ad_b[13:4], j[0]}] <= di_b[9 * j +: 9];
                            merged[9 * j +: 9] = di_b[9 * j +: 9];
                        end
                end else if (DATA_WIDTH_B == 9) begin
                    mem[ad_b[13:3]] <= di_b[8:0];
                    merged[8:0] = di_b[8:0];
                end else begin
                    // 1, 2, 4 bits: data bits only (no parity), DATA_WIDTH_B bits from data
                    // bit AD with its low log2(width) bits cleared
                    for (j = 0; j < DATA_WIDTH_B; j = j + 1)
                        mem[((ad_b & ~(DATA_WIDTH_B - 1)) + j) >> 3][((ad_b & ~(DATA_WIDTH_B - 1)) + j) & 7]
                            <= di_b[j];
                    merged[DATA_WIDTH_B - 1:0] = di_b[DATA_WIDTH_B - 1:0];
                end
                if (WRITEMODE_B == "WRITETHROUGH")
                    do_b <= merged;
                else if (WRITEMODE_B == "READBEFOREWRITE")
                    do_b <= old;
                // NORMAL: the output keeps its value during a write
            end else begin
                do_b <= old;
            end
        end
    end

    // 36-bit read (PDPW16KD use): port B reads all four bytes, DOA carries bytes 0-1
    reg [17:0] do_b_hi = 18'b0;
    always @(posedge clk_b)
        if (DATA_WIDTH_B == 36 && CEB && sel_b && !WEB)
            do_b_hi <= {mem[{ad_b[13:5], 2'd3}], mem[{ad_b[13:5], 2'd2}]};

    wire [17:0] dout_a = DATA_WIDTH_B == 36 ? do_b : do_a;
    wire [17:0] dout_b = DATA_WIDTH_B == 36 ? do_b_hi : do_b;
    assign DOA0 = dout_a[0];
    assign DOA1 = dout_a[1];
    assign DOA2 = dout_a[2];
    assign DOA3 = dout_a[3];
    assign DOA4 = dout_a[4];
    assign DOA5 = dout_a[5];
    assign DOA6 = dout_a[6];
    assign DOA7 = dout_a[7];
    assign DOA8 = dout_a[8];
    assign DOA9 = dout_a[9];
    assign DOA10 = dout_a[10];
    assign DOA11 = dout_a[11];
    assign DOA12 = dout_a[12];
    assign DOA13 = dout_a[13];
    assign DOA14 = dout_a[14];
    assign DOA15 = dout_a[15];
    assign DOA16 = dout_a[16];
    assign DOA17 = dout_a[17];
    assign DOB0 = dout_b[0];
    assign DOB1 = dout_b[1];
    assign DOB2 = dout_b[2];
    assign DOB3 = dout_b[3];
    assign DOB4 = dout_b[4];
    assign DOB5 = dout_b[5];
    assign DOB6 = dout_b[6];
    assign DOB7 = dout_b[7];
    assign DOB8 = dout_b[8];
    assign DOB9 = dout_b[9];
    assign DOB10 = dout_b[10];
    assign DOB11 = dout_b[11];
    assign DOB12 = dout_b[12];
    assign DOB13 = dout_b[13];
    assign DOB14 = dout_b[14];
    assign DOB15 = dout_b[15];
    assign DOB16 = dout_b[16];
    assign DOB17 = dout_b[17];
endmodule
