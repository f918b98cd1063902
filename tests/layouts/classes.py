"""Every class of the datasets whose fixtures can be written whole, as their archives name them (folder names,
list-file names), in the order the archives sort them. Sources: the archives' own listings (EuroSAT ``2750/``,
Caltech-101 ``101_ObjectCategories/``, Country211's ISO 3166-1 alpha-2 folders, DTD ``images/``, the Oxford-IIIT
Pet file ids, GTSRB's class ids, VOC 2007's 20 classes); the tests check each list's length and order against
CLIP_benchmark's ``en_classnames.json`` or torchvision where those name the classes."""

from __future__ import annotations

EUROSAT = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
           "Residential", "River", "SeaLake"]
CALTECH101 = ["BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "Motorbikes", *(
    "accordion airplanes anchor ant barrel bass beaver binocular bonsai brain brontosaurus buddha butterfly camera "
    "cannon car_side ceiling_fan cellphone chair chandelier cougar_body cougar_face crab crayfish crocodile "
    "crocodile_head cup dalmatian dollar_bill dolphin dragonfly electric_guitar elephant emu euphonium ewer ferry "
    "flamingo flamingo_head garfield gerenuk gramophone grand_piano hawksbill headphone hedgehog helicopter ibis "
    "inline_skate joshua_tree kangaroo ketch lamp laptop llama lobster lotus mandolin mayfly menorah metronome "
    "minaret nautilus octopus okapi pagoda panda pigeon pizza platypus pyramid revolver rhino rooster saxophone "
    "schooner scissors scorpion sea_horse snoopy soccer_ball stapler starfish stegosaurus stop_sign strawberry "
    "sunflower tick trilobite umbrella watch water_lilly wheelchair wild_cat windsor_chair wrench yin_yang").split()]
COUNTRY211 = (
    "AD AE AF AG AI AL AM AO AQ AR AT AU AW AX AZ BA BB BD BE BF BG BH BJ BM BN BO BQ BR BS BT BW BY BZ CA CD CF CH "
    "CI CK CL CM CN CO CR CU CV CW CY CZ DE DK DM DO DZ EC EE EG ES ET FI FJ FK FO FR GA GB GD GE GF GG GH GI GL GM "
    "GP GR GS GT GU GY HK HN HR HT HU ID IE IL IM IN IQ IR IS IT JE JM JO JP KE KG KH KN KP KR KW KY KZ LA LB LC LI "
    "LK LR LT LU LV LY MA MC MD ME MF MG MK ML MM MN MO MQ MR MT MU MV MW MX MY MZ NA NC NG NI NL NO NP NZ OM PA PE "
    "PF PG PH PK PL PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SS SV SX SY SZ TG TH "
    "TJ TL TM TN TO TR TT TW TZ UA UG US UY UZ VA VE VG VI VN VU WS XK YE ZA ZM ZW").split()
DTD = ("banded blotchy braided bubbly bumpy chequered cobwebbed cracked crosshatched crystalline dotted fibrous "
       "flecked freckled frilly gauzy grid grooved honeycombed interlaced knitted lacelike lined marbled matted "
       "meshed paisley perforated pitted pleated polka-dotted porous potholed scaly smeared spiralled sprinkled "
       "stained stratified striped studded swirly veined waffled woven wrinkled zigzagged").split()
# Oxford-IIIT Pet breeds as its file ids spell them (cats capitalised), in class-id order 1..37
PETS = ("Abyssinian american_bulldog american_pit_bull_terrier basset_hound beagle Bengal Birman Bombay boxer "
        "British_Shorthair chihuahua Egyptian_Mau english_cocker_spaniel english_setter german_shorthaired "
        "great_pyrenees havanese japanese_chin keeshond leonberger Maine_Coon miniature_pinscher newfoundland "
        "Persian pomeranian pug Ragdoll Russian_Blue saint_bernard samoyed scottish_terrier shiba_inu Siamese Sphynx "
        "staffordshire_bull_terrier wheaten_terrier yorkshire_terrier").split()
GTSRB = 43  # class ids 0..42
