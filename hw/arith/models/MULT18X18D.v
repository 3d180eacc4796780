// Behavioural simulation model of the Lattice ECP5 sysDSP multiplier MULT18X18D.
//
// Written for this project from the register structure described in Lattice TN1267
// ("ECP5 and ECP5-5G sysDSP Usage Guide"); Yosys ships MULT18X18D only as a black box, so
// without a model the DSP path of the gateware (impl="ecp5") could not be simulated.
//
// Implemented (everything else stops the simulation at start with $fatal, so an unsupported
// configuration can never simulate silently wrong):
//   * A, B: 18-bit operands, SIGNEDA / SIGNEDB select two's complement or unsigned per
//     operand; P = A * B exactly (36 bits), SIGNEDP = SIGNEDA | SIGNEDB.
//   * REG_INPUTA_CLK, REG_INPUTB_CLK, REG_INPUTC_CLK, REG_PIPELINE_CLK, REG_OUTPUT_CLK in
//     NONE | CLK0..CLK3, each register with its REG_*_CE (CE0..CE3) and REG_*_RST (RST0..RST3).
//     SIGNEDA / SIGNEDB are registered together with their operand (input registers), and
//     SIGNEDP travels with the product through the pipeline register, as in the silicon: a
//     sign input that changes together with its operand must not reach the multiplier a
//     cycle early or late.
//   * RESETMODE SYNC (reset acts at the clock edge) or ASYNC; reset wins over clock enable.
//     All registers start at zero, as after configuration.
//   * ROA/SROA, ROB/SROB, ROC: the operands after their input registers.
//   * SOURCEA = SOURCEB = 0 only (no shift-register operand input), SOURCEB_MODE "B_SHIFT",
//     MULT_BYPASS "DISABLED", HIGHSPEED_CLK "NONE", CAS_MATCH_REG "FALSE". CLKn_DIV only
//     matters for the high-speed mode and is ignored; GSR is accepted but no global reset is
//     modelled.

module MULT18X18D (
    A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0,
    B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0,
    C17, C16, C15, C14, C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2, C1, C0,
    SIGNEDA, SIGNEDB, SOURCEA, SOURCEB,
    CLK3, CLK2, CLK1, CLK0, CE3, CE2, CE1, CE0, RST3, RST2, RST1, RST0,
    SRIA17, SRIA16, SRIA15, SRIA14, SRIA13, SRIA12, SRIA11, SRIA10, SRIA9, SRIA8, SRIA7, SRIA6, SRIA5, SRIA4, SRIA3, SRIA2, SRIA1, SRIA0,
    SRIB17, SRIB16, SRIB15, SRIB14, SRIB13, SRIB12, SRIB11, SRIB10, SRIB9, SRIB8, SRIB7, SRIB6, SRIB5, SRIB4, SRIB3, SRIB2, SRIB1, SRIB0,
    SROA17, SROA16, SROA15, SROA14, SROA13, SROA12, SROA11, SROA10, SROA9, SROA8, SROA7, SROA6, SROA5, SROA4, SROA3, SROA2, SROA1, SROA0,
    SROB17, SROB16, SROB15, SROB14, SROB13, SROB12, SROB11, SROB10, SROB9, SROB8, SROB7, SROB6, SROB5, SROB4, SROB3, SROB2, SROB1, SROB0,
    ROA17, ROA16, ROA15, ROA14, ROA13, ROA12, ROA11, ROA10, ROA9, ROA8, ROA7, ROA6, ROA5, ROA4, ROA3, ROA2, ROA1, ROA0,
    ROB17, ROB16, ROB15, ROB14, ROB13, ROB12, ROB11, ROB10, ROB9, ROB8, ROB7, ROB6, ROB5, ROB4, ROB3, ROB2, ROB1, ROB0,
    ROC17, ROC16, ROC15, ROC14, ROC13, ROC12, ROC11, ROC10, ROC9, ROC8, ROC7, ROC6, ROC5, ROC4, ROC3, ROC2, ROC1, ROC0,
    P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0,
    SIGNEDP
);
    parameter REG_INPUTA_CLK = "NONE";
    parameter REG_INPUTA_CE = "CE0";
    parameter REG_INPUTA_RST = "RST0";
    parameter REG_INPUTB_CLK = "NONE";
    parameter REG_INPUTB_CE = "CE0";
    parameter REG_INPUTB_RST = "RST0";
    parameter REG_INPUTC_CLK = "NONE";
    parameter REG_INPUTC_CE = "CE0";
    parameter REG_INPUTC_RST = "RST0";
    parameter REG_PIPELINE_CLK = "NONE";
    parameter REG_PIPELINE_CE = "CE0";
    parameter REG_PIPELINE_RST = "RST0";
    parameter REG_OUTPUT_CLK = "NONE";
    parameter REG_OUTPUT_CE = "CE0";
    parameter REG_OUTPUT_RST = "RST0";
    parameter CLK0_DIV = "ENABLED";
    parameter CLK1_DIV = "ENABLED";
    parameter CLK2_DIV = "ENABLED";
    parameter CLK3_DIV = "ENABLED";
    parameter HIGHSPEED_CLK = "NONE";
    parameter GSR = "ENABLED";
    parameter CAS_MATCH_REG = "FALSE";
    parameter SOURCEB_MODE = "B_SHIFT";
    parameter MULT_BYPASS = "DISABLED";
    parameter RESETMODE = "SYNC";

    input A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0;
    input B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0;
    input C17, C16, C15, C14, C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2, C1, C0;
    input SIGNEDA, SIGNEDB, SOURCEA, SOURCEB;
    input CLK3, CLK2, CLK1, CLK0, CE3, CE2, CE1, CE0, RST3, RST2, RST1, RST0;
    input SRIA17, SRIA16, SRIA15, SRIA14, SRIA13, SRIA12, SRIA11, SRIA10, SRIA9, SRIA8, SRIA7, SRIA6, SRIA5, SRIA4, SRIA3, SRIA2, SRIA1, SRIA0;
    input SRIB17, SRIB16, SRIB15, SRIB14, SRIB13, SRIB12, SRIB11, SRIB10, SRIB9, SRIB8, SRIB7, SRIB6, SRIB5, SRIB4, SRIB3, SRIB2, SRIB1, SRIB0;
    output SROA17, SROA16, SROA15, SROA14, SROA13, SROA12, SROA11, SROA10, SROA9, SROA8, SROA7, SROA6, SROA5, SROA4, SROA3, SROA2, SROA1, SROA0;
    output SROB17, SROB16, SROB15, SROB14, SROB13, SROB12, SROB11, SROB10, SROB9, SROB8, SROB7, SROB6, SROB5, SROB4, SROB3, SROB2, SROB1, SROB0;
    output ROA17, ROA16, ROA15, ROA14, ROA13, ROA12, ROA11, ROA10, ROA9, ROA8, ROA7, ROA6, ROA5, ROA4, ROA3, ROA2, ROA1, ROA0;
    output ROB17, ROB16, ROB15, ROB14, ROB13, ROB12, ROB11, ROB10, ROB9, ROB8, ROB7, ROB6, ROB5, ROB4, ROB3, ROB2, ROB1, ROB0;
    output ROC17, ROC16, ROC15, ROC14, ROC13, ROC12, ROC11, ROC10, ROC9, ROC8, ROC7, ROC6, ROC5, ROC4, ROC3, ROC2, ROC1, ROC0;
    output P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0;
    output SIGNEDP;

    wire [17:0] a = {A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0};
    wire [17:0] b = {B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0};
    wire [17:0] c = {C17, C16, C15, C14, C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2, C1, C0};
    wire [3:0] clks = {CLK3, CLK2, CLK1, CLK0};
    wire [3:0] ces = {CE3, CE2, CE1, CE0};
    wire [3:0] rsts = {RST3, RST2, RST1, RST0};

    initial begin
        if (MULT_BYPASS != "DISABLED")
            $fatal(1, "MULT18X18D model: MULT_BYPASS = \"%s\" is not modelled", MULT_BYPASS);
        if (HIGHSPEED_CLK != "NONE")
            $fatal(1, "MULT18X18D model: HIGHSPEED_CLK = \"%s\" is not modelled", HIGHSPEED_CLK);
        if (SOURCEB_MODE != "B_SHIFT")
            $fatal(1, "MULT18X18D model: SOURCEB_MODE = \"%s\" is not modelled", SOURCEB_MODE);
        if (CAS_MATCH_REG != "FALSE")
            $fatal(1, "MULT18X18D model: CAS_MATCH_REG = \"%s\" is not modelled", CAS_MATCH_REG);
        if (RESETMODE != "SYNC" && RESETMODE != "ASYNC")
            $fatal(1, "MULT18X18D model: RESETMODE = \"%s\" is neither SYNC nor ASYNC", RESETMODE);
        if (GSR != "ENABLED" && GSR != "DISABLED")
            $fatal(1, "MULT18X18D model: GSR = \"%s\" is neither ENABLED nor DISABLED", GSR);
    end

    // The shift-register operand inputs (SRIA/SRIB) are not modelled: a DSP that selects them
    // stops the simulation instead of multiplying the wrong operand. A combinational check
    // (evaluated when the model settles at start and whenever the inputs change): an
    // edge-triggered one would give Verilator a scheduling trigger per DSP instance.
    always @(*)
        if (SOURCEA !== 1'b0 || SOURCEB !== 1'b0)
            $fatal(1, "MULT18X18D model: SOURCEA/SOURCEB = 1 (shift-register inputs) is not modelled");

    wire sa_r, sb_r;
    wire [17:0] a_r, b_r, c_r;
    MULT18X18D_model_stage #(.W(19), .CLK(REG_INPUTA_CLK), .CE(REG_INPUTA_CE),
        .RST(REG_INPUTA_RST), .RESETMODE(RESETMODE), .NAME("REG_INPUTA"))
        reg_a (.clks(clks), .ces(ces), .rsts(rsts), .d({SIGNEDA, a}), .q({sa_r, a_r}));
    MULT18X18D_model_stage #(.W(19), .CLK(REG_INPUTB_CLK), .CE(REG_INPUTB_CE),
        .RST(REG_INPUTB_RST), .RESETMODE(RESETMODE), .NAME("REG_INPUTB"))
        reg_b (.clks(clks), .ces(ces), .rsts(rsts), .d({SIGNEDB, b}), .q({sb_r, b_r}));
    MULT18X18D_model_stage #(.W(18), .CLK(REG_INPUTC_CLK), .CE(REG_INPUTC_CE),
        .RST(REG_INPUTC_RST), .RESETMODE(RESETMODE), .NAME("REG_INPUTC"))
        reg_c (.clks(clks), .ces(ces), .rsts(rsts), .d(c), .q(c_r));

    // Extend each operand to 36 bits by its own sign mode; the low 36 bits of the product
    // are then exact for every sign combination (|A*B| < 2**35 when either is signed,
    // A*B < 2**36 when both are unsigned).
    wire [35:0] a_x = {{18{sa_r & a_r[17]}}, a_r};
    wire [35:0] b_x = {{18{sb_r & b_r[17]}}, b_r};
    wire [35:0] prod = a_x * b_x;

    wire [35:0] p_pipe;
    wire sp_pipe;
    MULT18X18D_model_stage #(.W(37), .CLK(REG_PIPELINE_CLK), .CE(REG_PIPELINE_CE),
        .RST(REG_PIPELINE_RST), .RESETMODE(RESETMODE), .NAME("REG_PIPELINE"))
        reg_pipe (.clks(clks), .ces(ces), .rsts(rsts), .d({sa_r | sb_r, prod}),
                  .q({sp_pipe, p_pipe}));
    wire [35:0] p_out;
    MULT18X18D_model_stage #(.W(36), .CLK(REG_OUTPUT_CLK), .CE(REG_OUTPUT_CE),
        .RST(REG_OUTPUT_RST), .RESETMODE(RESETMODE), .NAME("REG_OUTPUT"))
        reg_out (.clks(clks), .ces(ces), .rsts(rsts), .d(p_pipe), .q(p_out));

    assign SIGNEDP = sp_pipe;
    assign P0 = p_out[0];
    assign P1 = p_out[1];
    assign P2 = p_out[2];
    assign P3 = p_out[3];
    assign P4 = p_out[4];
    assign P5 = p_out[5];
    assign P6 = p_out[6];
    assign P7 = p_out[7];
    assign P8 = p_out[8];
    assign P9 = p_out[9];
    assign P10 = p_out[10];
    assign P11 = p_out[11];
    assign P12 = p_out[12];
    assign P13 = p_out[13];
    assign P14 = p_out[14];
    assign P15 = p_out[15];
    assign P16 = p_out[16];
    assign P17 = p_out[17];
    assign P18 = p_out[18];
    assign P19 = p_out[19];
    assign P20 = p_out[20];
    assign P21 = p_out[21];
    assign P22 = p_out[22];
    assign P23 = p_out[23];
    assign P24 = p_out[24];
    assign P25 = p_out[25];
    assign P26 = p_out[26];
    assign P27 = p_out[27];
    assign P28 = p_out[28];
    assign P29 = p_out[29];
    assign P30 = p_out[30];
    assign P31 = p_out[31];
    assign P32 = p_out[32];
    assign P33 = p_out[33];
    assign P34 = p_out[34];
    assign P35 = p_out[35];
    assign ROA0 = a_r[0];
    assign ROA1 = a_r[1];
    assign ROA2 = a_r[2];
    assign ROA3 = a_r[3];
    assign ROA4 = a_r[4];
    assign ROA5 = a_r[5];
    assign ROA6 = a_r[6];
    assign ROA7 = a_r[7];
    assign ROA8 = a_r[8];
    assign ROA9 = a_r[9];
    assign ROA10 = a_r[10];
    assign ROA11 = a_r[11];
    assign ROA12 = a_r[12];
    assign ROA13 = a_r[13];
    assign ROA14 = a_r[14];
    assign ROA15 = a_r[15];
    assign ROA16 = a_r[16];
    assign ROA17 = a_r[17];
    assign SROA0 = a_r[0];
    assign SROA1 = a_r[1];
    assign SROA2 = a_r[2];
    assign SROA3 = a_r[3];
    assign SROA4 = a_r[4];
    assign SROA5 = a_r[5];
    assign SROA6 = a_r[6];
    assign SROA7 = a_r[7];
    assign SROA8 = a_r[8];
    assign SROA9 = a_r[9];
    assign SROA10 = a_r[10];
    assign SROA11 = a_r[11];
    assign SROA12 = a_r[12];
    assign SROA13 = a_r[13];
    assign SROA14 = a_r[14];
    assign SROA15 = a_r[15];
    assign SROA16 = a_r[16];
    assign SROA17 = a_r[17];
    assign ROB0 = b_r[0];
    assign ROB1 = b_r[1];
    assign ROB2 = b_r[2];
    assign ROB3 = b_r[3];
    assign ROB4 = b_r[4];
    assign ROB5 = b_r[5];
    assign ROB6 = b_r[6];
    assign ROB7 = b_r[7];
    assign ROB8 = b_r[8];
    assign ROB9 = b_r[9];
    assign ROB10 = b_r[10];
    assign ROB11 = b_r[11];
    assign ROB12 = b_r[12];
    assign ROB13 = b_r[13];
    assign ROB14 = b_r[14];
    assign ROB15 = b_r[15];
    assign ROB16 = b_r[16];
    assign ROB17 = b_r[17];
    assign SROB0 = b_r[0];
    assign SROB1 = b_r[1];
    assign SROB2 = b_r[2];
    assign SROB3 = b_r[3];
    assign SROB4 = b_r[4];
    assign SROB5 = b_r[5];
    assign SROB6 = b_r[6];
    assign SROB7 = b_r[7];
    assign SROB8 = b_r[8];
    assign SROB9 = b_r[9];
    assign SROB10 = b_r[10];
    assign SROB11 = b_r[11];
    assign SROB12 = b_r[12];
    assign SROB13 = b_r[13];
    assign SROB14 = b_r[14];
    assign SROB15 = b_r[15];
    assign SROB16 = b_r[16];
    assign SROB17 = b_r[17];
    assign ROC0 = c_r[0];
    assign ROC1 = c_r[1];
    assign ROC2 = c_r[2];
    assign ROC3 = c_r[3];
    assign ROC4 = c_r[4];
    assign ROC5 = c_r[5];
    assign ROC6 = c_r[6];
    assign ROC7 = c_r[7];
    assign ROC8 = c_r[8];
    assign ROC9 = c_r[9];
    assign ROC10 = c_r[10];
    assign ROC11 = c_r[11];
    assign ROC12 = c_r[12];
    assign ROC13 = c_r[13];
    assign ROC14 = c_r[14];
    assign ROC15 = c_r[15];
    assign ROC16 = c_r[16];
    assign ROC17 = c_r[17];
endmodule


// One optional register of the model: a wire when CLK is "NONE", else a W-bit register on
// clock CLKn with clock enable CEn and reset RSTn (reset wins over the clock enable).
module MULT18X18D_model_stage #(
    parameter integer W = 1,
    parameter CLK = "NONE",
    parameter CE = "CE0",
    parameter RST = "RST0",
    parameter RESETMODE = "SYNC",
    parameter NAME = "REG"
) (
    input [3:0] clks,
    input [3:0] ces,
    input [3:0] rsts,
    input [W-1:0] d,
    output [W-1:0] q
);
    localparam integer K = CLK == "CLK0" ? 0 : CLK == "CLK1" ? 1 : CLK == "CLK2" ? 2 :
                           CLK == "CLK3" ? 3 : -1;
    localparam integer E = CE == "CE0" ? 0 : CE == "CE1" ? 1 : CE == "CE2" ? 2 :
                           CE == "CE3" ? 3 : -1;
    localparam integer R = RST == "RST0" ? 0 : RST == "RST1" ? 1 : RST == "RST2" ? 2 :
                           RST == "RST3" ? 3 : -1;
    localparam BYPASS = CLK == "NONE";

    initial begin
        if (!BYPASS && K < 0)
            $fatal(1, "MULT18X18D model: %s_CLK = \"%s\" is not NONE or CLK0..CLK3", NAME, CLK);
        if (E < 0)
            $fatal(1, "MULT18X18D model: %s_CE = \"%s\" is not CE0..CE3", NAME, CE);
        if (R < 0)
            $fatal(1, "MULT18X18D model: %s_RST = \"%s\" is not RST0..RST3", NAME, RST);
    end

    generate
        if (BYPASS) begin : g_wire
            assign q = d;
        end else if (K < 0 || E < 0 || R < 0) begin : g_bad
            assign q = {W{1'b0}};     // never simulated: the initial block stops first
        end else begin : g_reg
            reg [W-1:0] r = {W{1'b0}};
            wire clk = clks[K];
            wire ce = ces[E];
            wire rst = rsts[R];
            if (RESETMODE == "ASYNC") begin : g_async
                always @(posedge clk or posedge rst)
                    if (rst) r <= {W{1'b0}};
                    else if (ce) r <= d;
            end else begin : g_sync
                always @(posedge clk)
                    if (rst) r <= {W{1'b0}};
                    else if (ce) r <= d;
            end
            assign q = r;
        end
    endgenerate
endmodule
